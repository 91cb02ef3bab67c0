"""notifier: pack snapshots and live Server-Sent Events, fed by Kafka. Wiring and the
HTTP edge; state in state.py, streams in streams.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest
from sse_starlette import EventSourceResponse
from starlette.middleware.cors import CORSMiddleware

from services.notifier import streams
from services.notifier.consumer import StatusFeed
from services.notifier.settings import Settings
from services.notifier.state import PackState, Store
from shared.auth import AuthError, verify_api_key, verify_stream_token
from shared.kafka import ensure_topics
from shared.revocations import Revocations

SUBSCRIBERS = Gauge("packline_sse_subscribers", "open SSE connections")
Token = Annotated[str | None, Query(max_length=2000, description="stream token from POST /v1/packs")]


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    store = Store(settings.notifier_history)
    feed = StatusFeed(settings.kafka_bootstrap_servers, settings.topics.packs_status, store)
    revocations = Revocations(settings.kafka_bootstrap_servers, settings.topics.auth_revocations)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await ensure_topics(settings.kafka_bootstrap_servers, settings.topics, settings.topic_partitions)
        await feed.start()
        await revocations.start()
        try:
            yield
        finally:
            await revocations.stop()
            await feed.stop()

    app = FastAPI(title="packline notifier", version="1.0.0", lifespan=lifespan)
    app.state.store, app.state.feed = store, feed
    app.add_middleware(
        CORSMiddleware, allow_origins=[settings.api_public_url.rstrip("/")], allow_headers=["*"],
        allow_methods=["GET"], expose_headers=["*"],
    )

    revocations.listeners.append(store.wake_user)

    def api_key(request: Request) -> tuple[str, int] | None:
        """(user id, key generation) of a Bearer API key; raises AuthError for a bad one."""
        auth = request.headers.get("authorization", "")
        if not auth.lower().startswith("bearer "):
            return None
        return verify_api_key(settings.packline_secret, auth[7:].strip())

    def key_allowed(request: Request) -> streams.Allowed:
        """For a stream opened with an API key: is that key still valid? (A stream token is
        scoped to one pack and expires by itself.)"""
        key = api_key(request)
        if key is None:
            return lambda: True
        user_id, generation = key
        return lambda: revocations.allows(user_id, generation)

    def last_event_id(request: Request) -> str | None:
        """The header, or a query parameter for clients that cannot set headers."""
        return request.headers.get("last-event-id") or request.query_params.get("last_event_id")

    def live(events: AsyncIterator[Any]) -> EventSourceResponse:
        return EventSourceResponse(_counted(events), ping=settings.notifier_ping_s, send_timeout=30)

    def caller(request: Request, token: str | None, pack_id: str | None) -> str:
        """The user id behind a Bearer API key, or behind a stream token for this pack."""
        try:
            if (key := api_key(request)) is not None:
                user_id, generation = key
                if not revocations.allows(user_id, generation):
                    raise AuthError("API key revoked")
                return user_id
            if token and pack_id:
                return verify_stream_token(settings.packline_secret, token, pack_id)
        except AuthError as exc:
            raise HTTPException(401, str(exc), headers={"WWW-Authenticate": "Bearer"}) from exc
        raise HTTPException(401, "missing bearer API key or stream token", headers={"WWW-Authenticate": "Bearer"})

    async def caught_up() -> None:
        """Serve nothing before the state is rebuilt from Kafka: it would be stale."""
        try:
            await asyncio.wait_for(feed.ready.wait(), settings.notifier_ready_timeout_s)
        except TimeoutError as exc:
            raise HTTPException(503, "notifier is still catching up with Kafka", headers={"Retry-After": "2"}) from exc

    async def owned_pack(request: Request, pack_id: str, token: str | None) -> PackState:
        user_id = caller(request, token, pack_id)
        await caught_up()
        pack = await store.wait_for_pack(pack_id, settings.notifier_pack_wait_s)
        # Another user's pack is indistinguishable from a missing one.
        if pack is None or pack.user_id != user_id:
            raise HTTPException(404, "no such pack")
        return pack

    @app.get("/v1/packs/{pack_id}")
    async def snapshot(pack_id: str, request: Request, token: Token = None) -> dict[str, Any]:
        return (await owned_pack(request, pack_id, token)).snapshot()

    @app.get("/v1/packs/{pack_id}/events", response_class=EventSourceResponse)
    async def pack_events(pack_id: str, request: Request, token: Token = None) -> EventSourceResponse:
        pack = await owned_pack(request, pack_id, token)
        return live(streams.pack_events(pack, last_event_id(request), key_allowed(request)))

    @app.get("/v1/events", response_class=EventSourceResponse)
    async def user_events(request: Request) -> EventSourceResponse:
        user_id = caller(request, None, None)
        await caught_up()
        return live(streams.user_events(store, user_id, last_event_id(request), key_allowed(request)))

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        ok = feed.ready.is_set()
        return JSONResponse({"status": "ok" if ok else "starting", "packs": len(store.packs)}, status_code=200 if ok else 503)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app


async def _counted(events: AsyncIterator[Any]) -> AsyncIterator[Any]:
    SUBSCRIBERS.inc()
    try:
        async for event in events:
            yield event
    finally:
        SUBSCRIBERS.dec()
