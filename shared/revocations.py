"""Revoked API keys, as the api and the notifier learn them from `auth.revocations`.

An API key carries a generation; revoking a user's keys publishes the lowest generation
still valid. Each process reads the (compacted) topic from the start and follows it, so a
revocation takes effect everywhere within a poll interval, with no shared database."""

from __future__ import annotations

import logging
from collections.abc import Callable

from shared.consumer import ConsumerLoop, read_from_start
from shared.errors import InvalidMessage
from shared.events import KeyRevoked, decode
from shared.kafka import KafkaConfig
from shared.topics import AUTH_REVOCATIONS

log = logging.getLogger("packline.revocations")


class Revocations(ConsumerLoop):
    name = "revocations"

    def __init__(self, kafka: KafkaConfig, topic: str) -> None:
        self.kafka, self.topic = kafka, topic
        self.min_generation: dict[str, int] = {}
        self.listeners: list[Callable[[str], None]] = []  # told the user id of each revocation

    def allows(self, user_id: str, generation: int) -> bool:
        return generation >= self.min_generation.get(user_id, 0)

    def apply(self, ev: KeyRevoked) -> None:
        self.min_generation[ev.user_id] = max(self.min_generation.get(ev.user_id, 0), ev.below_generation)
        for listener in self.listeners:
            listener(ev.user_id)

    async def start(self) -> None:
        self.consumer, _ = await read_from_start(self.kafka, self.topic, "packline-revocations")
        self.spawn()

    async def step(self) -> None:
        assert self.consumer is not None
        batches = await self.consumer.getmany(timeout_ms=500)
        for messages in batches.values():
            for m in messages:
                try:
                    ev = decode(m.value, AUTH_REVOCATIONS.events)
                except InvalidMessage as exc:
                    log.warning("skipping revocation %s@%s: %s", m.partition, m.offset, exc)
                    continue
                self.apply(ev)
