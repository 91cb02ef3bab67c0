"""notifier: pack snapshots and live Server-Sent Events, fed by Kafka. Wiring only: HTTP
in routes.py and deps.py, state in state.py, streams in streams.py, the feed in consumer.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp

from services.notifier import reads
from services.notifier.consumer import HistoryReader, StatusFeed
from services.notifier.fastpath import StreamFastPath
from services.notifier.fresh import LogEnd
from services.notifier.readmodel import ReadModel
from services.notifier.routes import router
from services.notifier.settings import Settings
from services.notifier.sse import Hub
from services.notifier.state import Store
from services.notifier.statement import StatementFeed, Statements
from services.notifier.webhooks.app import Webhooks
from shared.http import KeyCheck, collect_less_often, health_router
from shared.kafka import Publisher
from shared.keys import KeyUsage
from shared.metrics import ObserveHttp
from shared.poison import DeadLetters
from shared.revocations import Revocations


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    # Every pack ever made is in the read model; memory holds the live ones and a bounded cache.
    model = ReadModel(settings.notifier_db, settings.topics.packs_status)
    history = HistoryReader(settings.kafka, settings.topics.packs_status, settings.notifier_history)
    store = Store(settings.notifier_history, model, settings.notifier_cache_packs, history)
    feed = StatusFeed(settings.kafka, settings.topics.packs_status, store, settings.notifier_flush_s)
    book = Statements(settings.notifier_statement_db, settings.topics.credits_events)
    statements = StatementFeed(settings.kafka, settings.topics.credits_events, book)
    log_end = LogEnd(settings.kafka, settings.topics.packs_status)
    revocations = Revocations(settings.kafka, settings.topics.auth_revocations)
    revocations.listeners.append(store.wake_user)
    # Writes only reports of key use (last used, keys of a retiring secret), never in a request's
    # way; its producer starts with the first report.
    publisher = Publisher(settings.kafka, "packline-notifier")
    usage = KeyUsage(publisher, settings.topics, "notifier")
    webhooks = Webhooks(settings, store)
    hub = Hub(settings.notifier_ping_s)  # the SSE streams' keep-alive pings and slow-client cut-off
    revocations.dead_letters = feed.dead_letters = DeadLetters(publisher, settings.topics)
    statements.dead_letters = feed.dead_letters

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # Connects and catches up in the background: until it is done (and the pack feed has
        # caught up), requests get 503 and /healthz says so.
        collect_less_often()
        await revocations.start()
        await feed.start()
        await webhooks.start()
        await statements.start()
        try:
            yield
        finally:
            await webhooks.stop()
            await hub.stop()
            await usage.drain()
            await revocations.stop()
            await feed.stop()
            await statements.stop()
            await log_end.stop()
            await history.stop()
            model.close()
            book.close()
            await publisher.stop()

    def readiness() -> dict[str, Any]:
        ready = feed.ready.is_set() and revocations.ready.is_set() and statements.ready.is_set()
        return {"status": "ok" if ready else "starting", "packs": len(store.packs), "revocations": revocations.records,
                "statements": "ok" if statements.ready.is_set() else "starting"}

    paths = {getattr(route, "path", None): route for route in router.routes}
    app = Notifier(title="packline notifier", version="1.0.0", lifespan=lifespan)
    app.stream_routes = (paths["/v1/packs/{pack_id}/events"], paths["/v1/events"])
    app.state.settings, app.state.feed, app.state.statements = settings, feed, statements
    app.state.log_end, app.state.hub = log_end, hub
    app.state.keys = KeyCheck(settings.keyring, revocations, usage)
    app.add_middleware(
        CORSMiddleware, allow_origins=[settings.api_public_url.rstrip("/")], allow_headers=["*"],
        allow_methods=["GET"], expose_headers=["*"],
    )
    app.include_router(health_router("notifier", readiness))
    app.include_router(router)
    app.include_router(reads.router)
    app.add_middleware(ObserveHttp, service="notifier")  # spans and durations cover everything above
    return app


class Notifier(FastAPI):
    """The notifier's app: the stream fast path goes in front of the whole middleware stack
    (FastAPI's own included): a stream's every wake-up and write pass through no middleware."""

    stream_routes: tuple[object, object] = (None, None)

    def build_middleware_stack(self) -> ASGIApp:
        pack_route, user_route = self.stream_routes
        return StreamFastPath(super().build_middleware_stack(), pack_route=pack_route, user_route=user_route)
