"""The client's reading of the notifier's stream format (docs/contract.md, the pack stream)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from packline_client import ImageEvent, OtherEvent, PackEvent, ResyncEvent, RevokedEvent
from packline_client.sse import parse, typed

SNAPSHOT = {"pack_id": "p1", "user_id": "alice", "status": "PROCESSING", "cost": 2, "charged": 2, "refunded": 0, "reason": None,
            "created_at": "2026-01-01T00:00:00+00:00", "updated_at": "2026-01-01T00:00:01+00:00", "seq": 3, "a_later_field": 1,
            "images": [{"image_id": "main", "kind": "main", "status": "RETRYING", "attempts": 1, "url": None, "error": "busy",
                        "next_attempt_at": "2026-01-01T00:00:05+00:00", "run": 0}]}
WIRE = (
    ": ping\r\n\r\n"
    f"id: 3\r\nevent: pack\r\ndata: {json.dumps(SNAPSHOT)}\r\n\r\n"
    'id: 4\r\nevent: image\r\ndata: {"image_id": "main", "kind": "main", "status": "COMPLETED", "attempts": 2,\r\n'
    'data:  "url": "http://api/v1/images/p1/main", "pack_id": "p1", "seq": 4}\r\n\r\n'
    'id: 4\r\nevent: resync\r\ndata: {"pack_id": "p1", "reason": "cannot resume after id \'x\'"}\r\n\r\n'
    "event: shiny\r\ndata: new\r\n\r\n"
    'event: revoked\r\ndata: {"reason": "API key revoked"}\r\n\r\n'
    "id: 9\r\nevent: pack\r\ndata: {\"partial"  # cut mid-event: never yielded
)


async def lines() -> AsyncIterator[str]:
    for line in WIRE.split("\r\n"):
        yield line


async def test_the_stream_becomes_typed_events() -> None:
    events = [typed(raw) async for raw in parse(lines())]
    pack, image, resync, other, revoked = events
    assert isinstance(pack, PackEvent) and pack.id == "3" and pack.pack.status == "PROCESSING" and not pack.pack.terminal
    assert pack.pack.images[0].error == "busy" and pack.pack.images[0].next_attempt_at == "2026-01-01T00:00:05+00:00"
    assert isinstance(image, ImageEvent) and image.id == "4" and image.pack_id == "p1"
    assert (image.image.status, image.image.attempts, image.image.url) == ("COMPLETED", 2, "http://api/v1/images/p1/main")
    assert isinstance(resync, ResyncEvent) and resync.pack_id == "p1" and "cannot resume" in resync.reason
    assert isinstance(other, OtherEvent) and (other.event, other.data) == ("shiny", "new")
    assert isinstance(revoked, RevokedEvent) and revoked.reason == "API key revoked"
