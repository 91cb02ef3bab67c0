"""Read your writes for `GET /v1/packs`: the api answers `202` only once Kafka holds the
pack's DRAFT, so a listing that waits until the feed has applied `packs.status` up to
where the log ends at the moment of the request lists every pack posted before it.

One ListOffsets round trip per listing, shared by the listings that arrive while it is
under way; bounded by `timeout_s`, after which the listing answers with what the feed has
applied (a broker outage slows listings down, it does not fail them)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from services.notifier.state import Store
from shared.kafka import KafkaConfig

log = logging.getLogger("packline.notifier.fresh")


class LogEnd:
    def __init__(self, kafka: KafkaConfig, topic: str, timeout_s: float = 1.0) -> None:
        self.kafka, self.topic, self.timeout_s = kafka, topic, timeout_s
        self.consumer: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()
        self._ends: dict[int, int] = {}
        self._asked_at = float("-inf")  # when the request that gave `_ends` was sent

    async def stop(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()
            self.consumer = None

    async def wait_applied(self, store: Store) -> bool:
        """Until `store` has applied everything `packs.status` held when this was called;
        False when that could not be learnt or reached within `timeout_s`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        try:
            ends = await asyncio.wait_for(self._ends_since(loop.time(), list(store.applied)), self.timeout_s)
        except (KafkaError, OSError, TimeoutError) as exc:
            log.debug("end offsets of %s unknown: %r", self.topic, exc)
            return False
        while any(store.applied.get(p, 0) < end for p, end in ends.items()):
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    async def _ends_since(self, arrived: float, partitions: list[int]) -> dict[int, int]:
        """End offsets asked for no earlier than `arrived`: a request sent meanwhile for
        another listing serves this one too."""
        async with self._lock:
            if self._asked_at >= arrived:
                return self._ends
            if self.consumer is None:
                self.consumer = self.kafka.consumer(group_id=None, enable_auto_commit=False,
                                                    client_id="packline-notifier-log-end")
                try:
                    await self.consumer.start()
                except BaseException:
                    consumer, self.consumer = self.consumer, None
                    with contextlib.suppress(Exception):
                        await consumer.stop()
                    raise
            asked_at = asyncio.get_running_loop().time()
            ends = await self.consumer.end_offsets([TopicPartition(self.topic, p) for p in partitions])
            self._ends, self._asked_at = {tp.partition: end for tp, end in ends.items()}, asked_at
            return self._ends
