"""Feeds the store from `packs.status`. No consumer group: every notifier instance reads
every partition from the beginning, so any instance serves any pack and a restart
rebuilds the same state (and the same SSE ids)."""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaConsumer

from services.notifier.state import Store
from shared.errors import InvalidMessage
from shared.events import ImageStatus, PackStatus, decode
from shared.kafka import partitions_of

log = logging.getLogger("packline.notifier")


class StatusFeed:
    def __init__(self, bootstrap: str, topic: str, store: Store) -> None:
        self.bootstrap, self.topic, self.store = bootstrap, topic, store
        self.ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.skipped = 0

    async def start(self) -> None:
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, enable_auto_commit=False, group_id=None,
            auto_offset_reset="earliest", client_id="packline-notifier",
        )
        await self.consumer.start()
        tps = await partitions_of(self.bootstrap, self.topic)
        self.consumer.assign(tps)
        await self.consumer.seek_to_beginning(*tps)
        self._catch_up_to = await self.consumer.end_offsets(tps)
        self._task = asyncio.create_task(self._loop(), name="status-feed")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.consumer.stop()

    async def _check_ready(self) -> None:
        if self.ready.is_set():
            return
        positions = [await self.consumer.position(tp) >= end for tp, end in self._catch_up_to.items()]
        if all(positions):
            log.info("notifier caught up with %s: %d packs", self.topic, len(self.store.packs))
            self.ready.set()

    async def _loop(self) -> None:
        while True:
            try:
                batches = await self.consumer.getmany(timeout_ms=200, max_records=2000)
                for messages in batches.values():
                    for m in messages:
                        try:
                            self.store.apply(decode(m.value, (PackStatus, ImageStatus)))
                        except InvalidMessage as exc:
                            # The workers that consume this topic dead-letter it; here it is only skipped.
                            self.skipped += 1
                            log.warning("skipping %s[%s]@%s: %s", m.topic, m.partition, m.offset, exc)
                await self._check_ready()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("status feed failed; carrying on")
                await asyncio.sleep(1)
