"""Revoked API keys, as the api and the notifier learn them from `auth.revocations`.

Two kinds of revocation share the (compacted) topic:

- `key.revoked`, keyed by user id: every key of the user (account and named keys) below a
  generation; revoking a user's keys publishes the lowest generation still valid;
- `named_key.revoked`, keyed by key id: one named key, for ever; the user's other keys
  stay valid.

Each process reads the topic from the start and follows it, so a revocation takes effect
everywhere within a poll interval, with no shared database. Until the process has read
up to the end offsets it saw at start, it does not know what is revoked: `ready` is unset
and every authenticated request is refused (fail closed, `shared.http`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime

from shared.consumer import EventFeed, Record
from shared.events import KeyRevoked, NamedKeyRevoked
from shared.kafka import KafkaConfig
from shared.topics import AUTH_REVOCATIONS, Revocation

log = logging.getLogger("packline.revocations")


class Revocations(EventFeed[Revocation]):
    name = "revocations"

    def __init__(self, kafka: KafkaConfig, topic: str) -> None:
        super().__init__(kafka, topic, "packline-revocations", AUTH_REVOCATIONS.events)
        self.min_generation: dict[str, int] = {}
        self.revoked_since: dict[str, datetime] = {}  # user -> when its newest user-wide revocation happened
        self.revoked_keys: set[str] = set()  # named key ids
        self.listeners: list[Callable[[str], None]] = []  # told the user id of each revocation
        self.records = 0
        self.started_at = time.monotonic()
        self.ready_after_s: float | None = None

    async def start(self) -> None:
        self.started_at = time.monotonic()
        await super().start()

    def allows(self, user_id: str, generation: int, key_id: str | None = None) -> bool:
        """Whether a key (or a stream token minted by it) is still valid. Only meaningful
        once `ready` is set."""
        if key_id is not None and key_id in self.revoked_keys:
            return False
        return generation >= self.min_generation.get(user_id, 0)

    def apply(self, ev: Revocation) -> None:
        if isinstance(ev, KeyRevoked):
            if ev.below_generation > self.min_generation.get(ev.user_id, 0):
                self.min_generation[ev.user_id] = ev.below_generation
                self.revoked_since[ev.user_id] = ev.occurred_at
        elif isinstance(ev, NamedKeyRevoked):
            self.revoked_keys.add(ev.key_id)
        if self.ready.is_set():  # while catching up nobody is connected yet: no one to wake
            for listener in self.listeners:
                listener(ev.user_id)

    def handle(self, records: list[Record]) -> None:
        super().handle(records)
        self.records += len(records)

    def on_ready(self) -> None:
        self.ready_after_s = time.monotonic() - self.started_at
        log.info("revocations read to the end in %.2f s: %d records, %d users with a floor, %d named keys revoked",
                 self.ready_after_s, self.records, len(self.min_generation), len(self.revoked_keys))
