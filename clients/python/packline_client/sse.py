"""Server-Sent Events: the wire format (lines) to raw events, and raw events to typed ones."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

from packline_client.types import Image, ImageEvent, OtherEvent, Pack, PackEvent, ResyncEvent, RevokedEvent, StreamEvent


@dataclass(frozen=True)
class RawEvent:
    event: str
    data: str
    id: str | None


async def parse(lines: AsyncIterator[str]) -> AsyncIterator[RawEvent]:
    """One event per blank-line-terminated block; comments (the server's pings) are skipped.
    An `id:` field stays the last event id until another one comes, as in EventSource."""
    event, event_id = "message", None
    data: list[str] = []
    async for line in lines:
        if line == "":
            if data:
                yield RawEvent(event, "\n".join(data), event_id)
            event, data = "message", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id":
            event_id = value


def typed(raw: RawEvent) -> StreamEvent:
    if raw.event == "pack":
        return PackEvent(raw.id or "", Pack.from_json(json.loads(raw.data)))
    if raw.event == "image":
        data = json.loads(raw.data)
        return ImageEvent(raw.id or "", str(data["pack_id"]), Image.from_json(data))
    if raw.event == "resync":
        data = json.loads(raw.data)
        return ResyncEvent(raw.id, data.get("pack_id"), str(data.get("reason", "")))
    if raw.event == "revoked":
        return RevokedEvent(str(json.loads(raw.data).get("reason", "")))
    return OtherEvent(raw.event, raw.id, raw.data)
