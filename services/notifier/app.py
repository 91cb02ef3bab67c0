"""notifier: pack snapshots and live Server-Sent Events, fed by Kafka. Wiring only: HTTP
in routes.py and deps.py, state in state.py, streams in streams.py, the feed in consumer.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from services.notifier.consumer import StatusFeed
from services.notifier.routes import router
from services.notifier.settings import Settings
from services.notifier.state import Store
from shared.http import KeyCheck, health_router
from shared.revocations import Revocations


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    store = Store(settings.notifier_history)
    feed = StatusFeed(settings.kafka, settings.topics.packs_status, store)
    revocations = Revocations(settings.kafka, settings.topics.auth_revocations)
    revocations.listeners.append(store.wake_user)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await feed.start()
        await revocations.start()
        try:
            yield
        finally:
            await revocations.stop()
            await feed.stop()

    def readiness() -> dict[str, Any]:
        return {"status": "ok" if feed.ready.is_set() else "starting", "packs": len(store.packs)}

    app = FastAPI(title="packline notifier", version="1.0.0", lifespan=lifespan)
    app.state.settings, app.state.feed = settings, feed
    app.state.keys = KeyCheck(settings.packline_secret, revocations)
    app.add_middleware(
        CORSMiddleware, allow_origins=[settings.api_public_url.rstrip("/")], allow_headers=["*"],
        allow_methods=["GET"], expose_headers=["*"],
    )
    app.include_router(health_router("notifier", readiness))
    app.include_router(router)
    return app
