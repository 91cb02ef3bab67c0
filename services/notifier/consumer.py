"""Feeds the store from `packs.status`. No consumer group: every notifier instance reads
every partition from the beginning, so any instance serves any pack and a restart
rebuilds the same state (and the same SSE ids)."""

from __future__ import annotations

import asyncio
import logging

from services.notifier.state import Store
from shared.consumer import ConsumerLoop, read_from_start
from shared.errors import InvalidMessage
from shared.events import decode
from shared.kafka import KafkaConfig
from shared.topics import PACKS_STATUS

log = logging.getLogger("packline.notifier")


class StatusFeed(ConsumerLoop):
    name = "status-feed"

    def __init__(self, kafka: KafkaConfig, topic: str, store: Store) -> None:
        self.kafka, self.topic, self.store = kafka, topic, store
        self.ready = asyncio.Event()

    async def start(self) -> None:
        self.consumer, tps = await read_from_start(self.kafka, self.topic, "packline-notifier")
        self._catch_up_to = await self.consumer.end_offsets(tps)
        self.spawn()

    async def _check_ready(self) -> None:
        assert self.consumer is not None
        if self.ready.is_set():
            return
        positions = [await self.consumer.position(tp) >= end for tp, end in self._catch_up_to.items()]
        if all(positions):
            log.info("notifier caught up with %s: %d packs", self.topic, len(self.store.packs))
            self.ready.set()

    async def step(self) -> None:
        assert self.consumer is not None
        batches = await self.consumer.getmany(timeout_ms=200, max_records=2000)
        for messages in batches.values():
            for m in messages:
                self.store.at(m.partition, m.offset)
                try:
                    self.store.apply(decode(m.value, PACKS_STATUS.events))
                except InvalidMessage as exc:
                    # The workers that consume this topic dead-letter it; here it is only skipped.
                    log.warning("skipping %s[%s]@%s: %s", m.topic, m.partition, m.offset, exc)
        await self._check_ready()
