"""api: accepts pack requests over HTTP and puts them durably on Kafka. Wiring only."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from services.api import asyncapi, changes, keys, ops, ops_kafka, reads, webhooks
from services.api.coordination import ApiInstances, IdempotencyFeed
from services.api.limits import RateLimiter
from services.api.packs import PackFastPath
from services.api.routes import router
from services.api.settings import Settings
from shared.http import KeyCheck, collect_less_often, health_router
from shared.images import open_image_store
from shared.kafka import Publisher
from shared.keys import KeyRegistry, KeyUsage
from shared.metrics import ObserveHttp
from shared.poison import DeadLetters
from shared.revocations import Revocations
from shared.webhook_endpoints import WebhookEndpoints


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    revocations = Revocations(settings.kafka, settings.topics.auth_revocations)
    publisher = Publisher(settings.kafka, "packline-api", settings.api_kafka_timeout_s)
    registry = KeyRegistry(settings.kafka, settings.topics.auth_keys)
    usage = KeyUsage(publisher, settings.topics, "api")
    idempotency = IdempotencyFeed(settings.kafka, settings.topics.api_idempotency, publisher, settings.api_kafka_timeout_s)
    instances = ApiInstances(settings.kafka, settings.topics.api_instances, publisher, settings.api_heartbeat_s,
                             settings.api_instance_ttl_s)
    endpoints = WebhookEndpoints(settings.kafka, settings.topics.webhooks_endpoints, "packline-api-webhook-endpoints")
    attempts = webhooks.AttemptLog(settings.kafka, settings.topics.webhooks_attempts)
    replies = changes.PackReplies(settings.kafka, settings.topics.packs_replies)
    dead_letters = DeadLetters(publisher, settings.topics)
    switch = ops_kafka.ProviderSwitch(settings.kafka, settings.topics.generation_control)
    switch.dead_letters = dead_letters
    for feed in (revocations, registry, idempotency, instances):
        feed.dead_letters = dead_letters
    endpoints.dead_letters = attempts.dead_letters = replies.dead_letters = dead_letters

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # Both connect and catch up in the background: the port opens at once, and requests
        # with a key get 503 until the revocations are read (shared.http); /healthz says so.
        collect_less_often()
        await revocations.start()
        await registry.start()
        await idempotency.start()
        await publisher.start()
        await instances.start()
        await endpoints.start()
        await attempts.start()
        await replies.start()
        await switch.start()
        try:
            yield
        finally:
            await switch.stop()
            await replies.stop()
            await attempts.stop()
            await endpoints.stop()
            await instances.stop()
            await idempotency.stop()
            await usage.drain()
            await dead_letters.drain()
            await registry.stop()
            await revocations.stop()
            await publisher.stop()

    def readiness() -> dict[str, Any]:
        ready = all(feed.ready.is_set() for feed in (revocations, registry, idempotency, instances, endpoints, attempts, replies))
        return {"status": "ok" if ready else "starting", "revocations": revocations.records,
                "instances": instances.live(), "idempotency_keys": len(idempotency.index.first)}

    # Topics are created before this app starts (`packline serve` does it, and checks the cluster).
    app = FastAPI(title="packline api", version="1.0.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.publisher = publisher
    app.state.keys = KeyCheck(settings.keyring, revocations, usage)
    app.state.registry = registry
    app.state.limiter = RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst)
    app.state.idempotency = idempotency
    app.state.instances = instances
    app.state.images = open_image_store(settings)
    app.state.webhook_endpoints, app.state.webhook_attempts = endpoints, attempts
    app.state.replies = replies
    app.state.provider_switch = switch
    pack_route = next(r for r in router.routes if isinstance(r, APIRoute) and r.path == "/v1/packs")
    app.add_middleware(PackFastPath, route=pack_route)  # innermost of ours: CORS, the body limit and metrics apply
    app.add_middleware(CORSMiddleware, allow_origins=[settings.notifier_public_url.rstrip("/")], allow_headers=["*"], allow_methods=["*"])

    app.add_middleware(LimitBody, max_bytes=settings.max_body_bytes)

    app.include_router(health_router("api", readiness))
    app.include_router(router)
    app.include_router(changes.router)
    app.include_router(keys.router)
    app.include_router(asyncapi.router)
    app.include_router(webhooks.router)
    app.include_router(reads.router)
    app.include_router(ops.router)
    app.add_middleware(ObserveHttp, service="api")  # outermost: spans and durations cover everything above
    return app


class LimitBody:
    """413 for a request whose Content-Length is over `max_bytes`, before anything reads
    it. Plain ASGI: starlette's BaseHTTPMiddleware (`@app.middleware`) runs the rest of
    the app in a task of its own and copies every response through a stream."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            length = next((v for k, v in scope["headers"] if k == b"content-length"), b"")
            if length.isdigit() and int(length) > self.max_bytes:
                response = JSONResponse({"detail": f"body larger than {self.max_bytes} bytes"}, status_code=413)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
