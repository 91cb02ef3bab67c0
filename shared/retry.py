"""Retry tiers: a plain aiokafka consumer (its own group) that moves due messages from the
tier topics back to where they are worked on: image jobs to `images.jobs` (generation),
webhook deliveries to `webhooks.deliveries` (the notifier's deliverer).

A tier's partition is paused while its head message is not due, so waiting costs no
handler and blocks nothing else; offsets are committed only after the message is back on
its target. A malformed message (or `x-due-at`) leaves for `invalid.dlq` in its turn, and
the messages around it move on. Not an OrderedConsumer: a tier's wait is a pause, not a handler.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from aiokafka import TopicPartition

from shared.consumer import ConsumerLoop, Rebalance, group_member
from shared.errors import InvalidMessage
from shared.events import decode
from shared.kafka import KafkaConfig, Outgoing, Publisher, header, invalid_message
from shared.topics import Topics, TopicSpec

log = logging.getLogger("packline.retry")


class RetryForwarder(ConsumerLoop):
    def __init__(
        self, kafka: KafkaConfig, group: str, topics: Topics, publisher: Publisher, *,
        tiers: Sequence[str], target: TopicSpec[Any],
    ) -> None:
        """Moves the messages of `tiers` to `target` (whose event types they must be) when due."""
        self.kafka, self.group, self.topics, self.publisher = kafka, group, topics, publisher
        self.tiers, self.target = list(tiers), target
        self.name = f"retry[{topics.name(target)}]"
        self.waiting: dict[TopicPartition, int] = {}  # paused partition -> due time (epoch ms)

    async def start(self) -> None:
        self.consumer = group_member(self.kafka, self.group)
        await self.consumer.start()
        self.consumer.subscribe(self.tiers, listener=Rebalance(revoked=self._forget))
        self.spawn()

    async def _forget(self, revoked: list[TopicPartition]) -> None:
        for tp in revoked:
            self.waiting.pop(tp, None)

    async def step(self) -> None:
        assert self.consumer is not None
        now_ms = int(time.time() * 1000)
        for tp, due in list(self.waiting.items()):
            if due <= now_ms:
                del self.waiting[tp]
                if tp in self.consumer.assignment():
                    self.consumer.resume(tp)
        wait_ms = min([500, *(max(0, d - now_ms) for d in self.waiting.values())])
        batches = await self.consumer.getmany(timeout_ms=max(wait_ms, 10))
        target = self.topics.name(self.target)
        for tp, messages in batches.items():
            out: list[Outgoing] = []
            last = None
            for m in messages:
                try:
                    due = due_at(m.headers)
                    decode(m.value, self.target.events)
                except InvalidMessage as exc:
                    log.warning("dead-lettering %s[%s]@%s: %s", m.topic, m.partition, m.offset, exc)
                    out.append(invalid_message(
                        self.topics, topic=m.topic, partition=m.partition, offset=m.offset, key=m.key, value=m.value,
                        reason=str(exc), headers=list(m.headers), bad_header=exc.header if isinstance(exc, BadHeader) else None,
                    ))
                    last = m.offset
                    continue
                if due > int(time.time() * 1000):
                    # Not due: park the partition at this message and look again at its due time.
                    self.consumer.pause(tp)
                    self.consumer.seek(tp, m.offset)
                    self.waiting[tp] = due
                    break
                out.append(Outgoing(target, m.value or b"", m.key or b"", list(m.headers)))
                last = m.offset
            if out and last is not None:
                try:
                    await self.publisher.send(out)
                    await self.consumer.commit({tp: last + 1})
                except Exception:
                    # Fetch these again next time rather than skip them.
                    self.consumer.seek(tp, messages[0].offset)
                    self.waiting.pop(tp, None)
                    self.consumer.resume(tp)
                    raise


class BadHeader(InvalidMessage):
    def __init__(self, message: str, header: str) -> None:
        super().__init__(message)
        self.header = header


def due_at(headers: Sequence[tuple[str, bytes]] | None) -> int:
    """`x-due-at` in epoch ms (absent: due now); BadHeader when it is not a whole number."""
    raw = header(headers, "x-due-at")
    if raw is None:
        return 0
    try:
        return int(raw)
    except ValueError:
        raise BadHeader(f"malformed x-due-at header: {raw[:100]!r}", "x-due-at") from None
