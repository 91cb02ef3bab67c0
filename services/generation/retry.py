"""Retry tiers: a plain aiokafka consumer (its own group) that moves due jobs from
`images.retry.<tier>` back to `images.jobs`.

A tier's partition is paused while its head message is not due, so waiting costs no
handler and blocks nothing else; offsets are committed only after the job is back on
`images.jobs`. Not an OrderedConsumer: a tier's wait is a pause, not a handler.
"""

from __future__ import annotations

import logging
import time

from aiokafka import TopicPartition

from shared.consumer import ConsumerLoop, Rebalance, group_member
from shared.kafka import KafkaConfig, Outgoing, Publisher, header
from shared.topics import Topics

log = logging.getLogger("packline.retry")


class RetryForwarder(ConsumerLoop):
    def __init__(self, kafka: KafkaConfig, group: str, topics: Topics, publisher: Publisher) -> None:
        self.topics = topics
        self.publisher = publisher
        self.waiting: dict[TopicPartition, int] = {}  # paused partition -> due time (epoch ms)
        self.kafka, self.group = kafka, group

    async def start(self) -> None:
        self.consumer = group_member(self.kafka, self.group)
        await self.consumer.start()
        self.consumer.subscribe(self.topics.retry_topics, listener=Rebalance(revoked=self._forget))
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
        for tp, messages in batches.items():
            forward: list[Outgoing] = []
            last = None
            for m in messages:
                due = int(header(m.headers, "x-due-at") or 0)
                if due > int(time.time() * 1000):
                    # Not due: park the partition at this message and look again at its due time.
                    self.consumer.pause(tp)
                    self.consumer.seek(tp, m.offset)
                    self.waiting[tp] = due
                    break
                forward.append(Outgoing(self.topics.images_jobs, m.value or b"", m.key or b"", list(m.headers)))
                last = m.offset
            if forward and last is not None:
                try:
                    await self.publisher.send(forward)
                    await self.consumer.commit({tp: last + 1})
                except Exception:
                    # Fetch these again next time rather than skip them.
                    self.consumer.seek(tp, messages[0].offset)
                    self.waiting.pop(tp, None)
                    self.consumer.resume(tp)
                    raise
