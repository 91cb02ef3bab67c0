"""The webhook retry tiers: moves due deliveries from `webhooks.retry.<tier>` back to
`webhooks.deliveries`, as generation's retry mover does for image jobs. A tier's partition
is paused while its head message is not due, so a wait costs nothing and blocks nothing
else; offsets are committed only once the delivery is back on `webhooks.deliveries`."""

from __future__ import annotations

import time

from aiokafka import TopicPartition

from shared.consumer import ConsumerLoop, Rebalance, group_member
from shared.errors import InvalidMessage
from shared.events import decode
from shared.kafka import KafkaConfig, Outgoing, Publisher, header, invalid_message
from shared.topics import WEBHOOKS_DELIVERIES, Topics


def group_id(topic_prefix: str) -> str:
    return f"{topic_prefix}packline-webhooks-retry"


class WebhookRetryForwarder(ConsumerLoop):
    name = "webhook-retry"

    def __init__(self, kafka: KafkaConfig, group: str, topics: Topics, publisher: Publisher) -> None:
        self.kafka, self.group, self.topics, self.publisher = kafka, group, topics, publisher
        self.waiting: dict[TopicPartition, int] = {}  # paused partition -> due time (epoch ms)

    async def start(self) -> None:
        self.consumer = group_member(self.kafka, self.group)
        await self.consumer.start()
        self.consumer.subscribe(self.topics.webhook_retry_topics, listener=Rebalance(revoked=self._forget))
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
            out: list[Outgoing] = []
            last = None
            for m in messages:
                due_text = header(m.headers, "x-due-at") or "0"
                try:
                    decode(m.value, WEBHOOKS_DELIVERIES.events)
                    if not due_text.isdigit():
                        raise InvalidMessage(f"x-due-at is not a time: {due_text!r}")
                except InvalidMessage as exc:
                    out.append(invalid_message(self.topics, topic=m.topic, partition=m.partition, offset=m.offset,
                                               key=m.key, value=m.value, reason=str(exc)))
                    last = m.offset
                    continue
                if int(due_text) > int(time.time() * 1000):
                    self.consumer.pause(tp)
                    self.consumer.seek(tp, m.offset)
                    self.waiting[tp] = int(due_text)
                    break
                out.append(Outgoing(self.topics.webhooks_deliveries, m.value or b"", m.key or b"", list(m.headers)))
                last = m.offset
            if out and last is not None:
                try:
                    await self.publisher.send(out)
                    await self.consumer.commit({tp: last + 1})
                except Exception:
                    self.consumer.seek(tp, messages[0].offset)
                    self.waiting.pop(tp, None)
                    self.consumer.resume(tp)
                    raise
