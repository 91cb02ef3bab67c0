"""The consumer every worker reads its topics with: a consumer-group member that handles
each partition strictly in order, partitions side by side, and commits a batch's offsets
only after every message in it was handled (effects first, offsets after).

aiokafka runs a rebalance inside `getmany`, that is between two batches, so no message is
being handled while partitions move; a commit that fails because a rebalance started in
the meantime only means the batch is read again, and every handler is idempotent.
(This replaced faust-streaming agents, whose 0.15.3 commit bookkeeping could skip a
message after a rebalance: README, "Offsets".)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeAlias

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from shared.kafka import ConsumerLoop

log = logging.getLogger("packline.consumer")

Record: TypeAlias = "ConsumerRecord[bytes, bytes]"


def member_options(group: str) -> dict[str, object]:
    """What every packline group member shares: manual commits, from the start of a new
    group, and a short session so a SIGKILLed member's partitions move within seconds."""
    return {
        "group_id": group, "client_id": f"{group}-consumer", "enable_auto_commit": False,
        "auto_offset_reset": "earliest", "session_timeout_ms": 10_000, "heartbeat_interval_ms": 1_000,
    }


class OrderedConsumer(ConsumerLoop):
    def __init__(
        self, bootstrap: str, group: str, topics: Sequence[str], handle: Callable[[Record], Awaitable[None]],
        max_batch: int = 200,
    ) -> None:
        self.bootstrap, self.group, self.topics, self.handle = bootstrap, group, list(topics), handle
        self.max_batch = max_batch
        self.name = f"{group}[{','.join(self.topics)}]"

    async def start(self) -> None:
        self.consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, **member_options(self.group))  # type: ignore[arg-type]
        await self.consumer.start()
        self.consumer.subscribe(self.topics)
        self.spawn()

    async def step(self) -> None:
        assert self.consumer is not None
        batches = await self.consumer.getmany(timeout_ms=500, max_records=self.max_batch)
        if not batches:
            return
        try:
            await asyncio.gather(*(self._in_order(records) for records in batches.values()))
        except BaseException:
            # Never let the position run past messages that were not handled: read them again.
            for tp, records in batches.items():
                self.consumer.seek(tp, records[0].offset)
            raise
        offsets = {tp: records[-1].offset + 1 for tp, records in batches.items()}
        try:
            await self.consumer.commit(offsets)
        except Exception as exc:
            # Partitions moved meanwhile: their new owner reads the batch again (idempotent).
            log.info("%s: commit of %s not taken (%r); the batch will be read again", self.name, _fmt(offsets), exc)

    async def _in_order(self, records: list[Record]) -> None:
        for record in records:
            await self.handle(record)


def _fmt(offsets: dict[TopicPartition, int]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]@{o}" for tp, o in sorted(offsets.items()))
