"""HTTP edge of the notifier: pack snapshots and live Server-Sent Events."""

from __future__ import annotations

from functools import partial
from typing import Any

from fastapi import APIRouter

from services.notifier import streams
from services.notifier.deps import (
    HubDep,
    LastEventId,
    PackAllowedDep,
    PackDep,
    StoreDep,
    StreamUserDep,
    UserAllowedDep,
)
from services.notifier.sse import EventStream

router = APIRouter()


@router.get("/v1/packs/{pack_id}")
async def snapshot(pack: PackDep) -> dict[str, Any]:
    return pack.snapshot()


@router.get("/v1/packs/{pack_id}/events", response_class=EventStream, status_code=200)  # EventStream names no default status
async def pack_events(pack: PackDep, last_id: LastEventId, allowed: PackAllowedDep, hub: HubDep) -> EventStream:
    return EventStream(partial(streams.pack_events, pack, last_id, allowed), hub)


@router.get("/v1/events", response_class=EventStream, status_code=200)
async def user_events(
    user_id: StreamUserDep, store: StoreDep, last_id: LastEventId, allowed: UserAllowedDep, hub: HubDep,
) -> EventStream:
    return EventStream(partial(streams.user_events, store, user_id, last_id, allowed), hub)
