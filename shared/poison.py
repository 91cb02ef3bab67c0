"""Malformed records of the topics every process reads in full, with no consumer group and
no offset to hold (`packs.status` in the notifier, `auth.revocations`, the api's control
topics): the reader skips them and they go to invalid.dlq from here, in the background.

Each process that reads such a record sends it (once per process), so several instances
or a restart may send the same one again: `packline dlq` shows one entry per origin
(topic, partition, offset)."""

from __future__ import annotations

import asyncio
import logging

from shared.consumer import Record
from shared.errors import BrokerUnavailable
from shared.kafka import Outgoing, Publisher, invalid_message
from shared.topics import Topics

log = logging.getLogger("packline.poison")
SEND_TRIES = 10
SEEN_KEPT = 100_000  # origins remembered per process


class DeadLetters:
    def __init__(self, publisher: Publisher, topics: Topics) -> None:
        self.publisher, self.topics = publisher, topics
        self.sent = 0
        self._seen: set[tuple[str, int, int]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def add(self, record: Record, reason: str, error_type: str = "InvalidMessage") -> None:
        origin = (record.topic, record.partition, record.offset)
        if origin in self._seen:
            return
        if len(self._seen) >= SEEN_KEPT:
            self._seen.clear()  # at worst a copy more on invalid.dlq
        self._seen.add(origin)
        dead = invalid_message(
            self.topics, topic=record.topic, partition=record.partition, offset=record.offset, key=record.key,
            value=record.value, reason=reason, error_type=error_type, headers=list(record.headers or ()),
        )
        task = asyncio.get_running_loop().create_task(self._send(dead))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, dead: Outgoing) -> None:
        for attempt in range(1, SEND_TRIES + 1):
            try:
                await self.publisher.send([dead])
                self.sent += 1
                return
            except BrokerUnavailable as exc:
                if attempt == SEND_TRIES:  # the next start reads the record again and sends it then
                    log.warning("could not dead-letter a malformed record: %s", exc)
                    return
                await asyncio.sleep(min(0.5 * attempt, 5.0))

    async def drain(self, timeout_s: float = 2.0) -> None:
        """Give dead letters in flight a moment at shutdown."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout_s)
