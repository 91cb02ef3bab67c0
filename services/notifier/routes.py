"""HTTP edge of the notifier: pack snapshots and live Server-Sent Events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter
from prometheus_client import Gauge
from sse_starlette import EventSourceResponse, ServerSentEvent

from services.notifier import streams
from services.notifier.deps import (
    LastEventId,
    PackAllowedDep,
    PackDep,
    SettingsDep,
    StoreDep,
    StreamUserDep,
    UserAllowedDep,
)

router = APIRouter()
SUBSCRIBERS = Gauge("packline_sse_subscribers", "open SSE connections")


@router.get("/v1/packs/{pack_id}")
async def snapshot(pack: PackDep) -> dict[str, Any]:
    return pack.snapshot()


@router.get("/v1/packs/{pack_id}/events", response_class=EventSourceResponse)
async def pack_events(pack: PackDep, last_id: LastEventId, allowed: PackAllowedDep, settings: SettingsDep) -> EventSourceResponse:
    return _live(streams.pack_events(pack, last_id, allowed), settings.notifier_ping_s)


@router.get("/v1/events", response_class=EventSourceResponse)
async def user_events(
    user_id: StreamUserDep, store: StoreDep, last_id: LastEventId, allowed: UserAllowedDep, settings: SettingsDep,
) -> EventSourceResponse:
    return _live(streams.user_events(store, user_id, last_id, allowed), settings.notifier_ping_s)


def _live(events: AsyncIterator[ServerSentEvent], ping_s: float) -> EventSourceResponse:
    return EventSourceResponse(_counted(events), ping=ping_s, send_timeout=30)


async def _counted(events: AsyncIterator[ServerSentEvent]) -> AsyncIterator[ServerSentEvent]:
    SUBSCRIBERS.inc()
    try:
        async for event in events:
            yield event
    finally:
        SUBSCRIBERS.dec()
