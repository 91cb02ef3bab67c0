"""A small Server-Sent Events client over httpx that resumes with Last-Event-ID."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass
class SseEvent:
    event: str
    data: str
    id: str | None

    def json(self) -> Any:
        return json.loads(self.data)


async def parse(lines: AsyncIterator[str]) -> AsyncIterator[SseEvent]:
    event, event_id = "message", None
    data: list[str] = []
    async for line in lines:
        if line == "":
            if data:
                yield SseEvent(event, "\n".join(data), event_id)
            event, data = "message", []
            continue
        if line.startswith(":"):
            continue  # comment ping
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            event = value
        elif field == "data":
            data.append(value)
        elif field == "id":
            event_id = value


async def follow(
    url: str, headers: dict[str, str], last_event_id: str | None = None, retries: int = 1000,
    timeout: float = 60.0,
) -> AsyncIterator[SseEvent]:
    """Yields events until the server ends the stream; reconnects after drops, resuming
    after the last id seen, so the caller gets no gap and no duplicate."""
    attempt = 0
    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=5.0)) as client:
        while True:
            hdrs = dict(headers, Accept="text/event-stream")
            if last_event_id is not None:
                hdrs["Last-Event-ID"] = last_event_id
            try:
                async with client.stream("GET", url, headers=hdrs) as response:
                    if response.status_code != 200:
                        body = (await response.aread()).decode(errors="replace")
                        raise httpx.HTTPStatusError(f"{response.status_code}: {body}", request=response.request, response=response)
                    attempt = 0
                    async for ev in parse(response.aiter_lines()):
                        if ev.id is not None:
                            last_event_id = ev.id
                        yield ev
                return  # the server ended the stream: the pack is terminal
            except (httpx.TransportError, httpx.RemoteProtocolError):
                attempt += 1
                if attempt > retries:
                    raise
                await asyncio.sleep(min(0.5 * attempt, 5.0))
