"""shared.consumer.OrderedConsumer on the real broker: each partition in order, offsets
committed only after handling and the flush of effects, and whatever was not flushed is
handled again rather than skipped."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import defaultdict

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from shared.consumer import FULL_POLL_S, ConsumerLoop, OrderedConsumer, Record, group_member
from shared.kafka import KafkaConfig, Outgoing, Publisher

pytestmark = pytest.mark.e2e
PARTITIONS = 3


async def new_topic(bootstrap: str) -> str:
    name = f"oc-{uuid.uuid4().hex[:10]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, num_partitions=PARTITIONS, replication_factor=1)])
    finally:
        await admin.close()
    return name


async def publish(bootstrap: str, topic: str, n: int) -> None:
    publisher = Publisher(KafkaConfig(bootstrap), "oc-test")
    await publisher.start()
    try:
        await publisher.send([Outgoing(topic, str(i).encode(), f"k{i % 7}".encode()) for i in range(n)])
    finally:
        await publisher.stop()


async def until(condition: object, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def committed(bootstrap: str, group: str, topic: str) -> dict[int, int | None]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        return {p: await consumer.committed(TopicPartition(topic, p)) for p in range(PARTITIONS)}
    finally:
        await consumer.stop()


async def test_each_partition_in_order_and_committed_after_handling(kafka_bootstrap: str) -> None:
    topic, group = await new_topic(kafka_bootstrap), f"g-{uuid.uuid4().hex[:8]}"
    await publish(kafka_bootstrap, topic, 300)
    seen: dict[int, list[int]] = defaultdict(list)

    async def handle(record: Record) -> None:
        seen[record.partition].append(record.offset)

    consumer = OrderedConsumer(KafkaConfig(kafka_bootstrap), group, [topic], handle)
    await consumer.start()
    try:
        await until(lambda: sum(map(len, seen.values())) == 300)
    finally:
        await consumer.stop()  # commits what was handled
    assert all(offsets == list(range(len(offsets))) for offsets in seen.values())
    assert await committed(kafka_bootstrap, group, topic) == {p: len(seen[p]) for p in range(PARTITIONS)}


async def test_a_failed_flush_means_handling_again_never_skipping(kafka_bootstrap: str) -> None:
    topic, group = await new_topic(kafka_bootstrap), f"g-{uuid.uuid4().hex[:8]}"
    await publish(kafka_bootstrap, topic, 120)
    handled: list[tuple[int, int]] = []
    flushes = 0

    async def handle(record: Record) -> None:
        handled.append((record.partition, record.offset))

    async def flaky_flush() -> None:
        nonlocal flushes
        flushes += 1
        if flushes == 1:
            raise ConnectionError("the effects of this round did not all make it")

    consumer = OrderedConsumer(KafkaConfig(kafka_bootstrap), group, [topic], handle, before_commit=flaky_flush)
    await consumer.start()
    try:
        await until(lambda: len(set(handled)) == 120 and flushes >= 2)
        await asyncio.sleep(2 * consumer.commit_every_s)
    finally:
        await consumer.stop()
    assert len(handled) > 120, "what the failed flush covered was handled again"
    ends = {p: 1 + max(o for q, o in handled if q == p) for p in range(PARTITIONS)}
    assert await committed(kafka_bootstrap, group, topic) == ends


async def test_a_new_member_resumes_where_the_old_one_committed(kafka_bootstrap: str) -> None:
    topic, group = await new_topic(kafka_bootstrap), f"g-{uuid.uuid4().hex[:8]}"
    await publish(kafka_bootstrap, topic, 90)
    first: list[tuple[int, int]] = []
    second: list[tuple[int, int]] = []

    async def slow(record: Record) -> None:
        first.append((record.partition, record.offset))
        await asyncio.sleep(0.01)

    one = OrderedConsumer(KafkaConfig(kafka_bootstrap), group, [topic], slow, max_batch=5)
    await one.start()
    await until(lambda: len(first) >= 30)
    await one.stop()

    async def fast(record: Record) -> None:
        second.append((record.partition, record.offset))

    two = OrderedConsumer(KafkaConfig(kafka_bootstrap), group, [topic], fast)
    await two.start()
    try:
        await until(lambda: len(set(first) | set(second)) == 90)
    finally:
        await two.stop()
    assert set(first) | set(second) == {(p, o) for p in range(PARTITIONS) for o in range(ends_of(first, second)[p])}
    # The stopped member committed what it had finished; only the batch it was in the middle
    # of (at most max_batch records per partition) is handled again.
    assert len(set(first) & set(second)) <= 5 * PARTITIONS


def ends_of(*runs: list[tuple[int, int]]) -> dict[int, int]:
    return {p: 1 + max(o for run in runs for q, o in run if q == p) for p in range(PARTITIONS)}


class Buffered(ConsumerLoop):
    """A read-ahead consumer as intake and the job scheduler are: records wait in a buffer
    of at most `limit` until something takes them."""

    def __init__(self, bootstrap: str, group: str, topic: str, limit: int) -> None:
        self.bootstrap, self.group, self.topic, self.limit = bootstrap, group, topic, limit
        self.buffer: list[Record] = []
        self.largest = 0

    async def start(self) -> None:
        self.consumer = group_member(KafkaConfig(self.bootstrap), self.group)
        await self.consumer.start()
        self.consumer.subscribe([self.topic])
        self.spawn()

    async def step(self) -> None:
        assert self.consumer is not None
        await self.read_ahead(self.buffer.__len__, self.limit)
        batches = await self.consumer.getmany(timeout_ms=100, max_records=max(1, self.limit - len(self.buffer)))
        for records in batches.values():
            self.buffer.extend(records)
        self.largest = max(self.largest, len(self.buffer))


async def test_a_full_read_ahead_buffer_waits_for_room_without_pausing_until_it_stalls(kafka_bootstrap: str) -> None:
    """aiokafka drops what it fetched for a paused partition and fetches it again on resume:
    a buffer that only fills and drains is never paused. One that stays full past
    FULL_POLL_S is paused (and polled, so the member stays in the group), then resumed."""
    topic, group = await new_topic(kafka_bootstrap), f"g-{uuid.uuid4().hex[:8]}"
    await publish(kafka_bootstrap, topic, 300)
    loop = Buffered(kafka_bootstrap, group, topic, limit=20)
    taken: dict[int, list[int]] = defaultdict(list)
    paused_while_draining = 0

    async def drain(n: int) -> None:
        nonlocal paused_while_draining
        for _ in range(n):
            await until(lambda: bool(loop.buffer))
            record = loop.buffer.pop(0)
            taken[record.partition].append(record.offset)
            assert loop.consumer is not None
            paused_while_draining += bool(loop.consumer.paused())
            await asyncio.sleep(0.002)

    await loop.start()
    try:
        await drain(150)
        assert paused_while_draining == 0
        await until(lambda: len(loop.buffer) == 20)
        assert loop.consumer is not None
        await until(lambda: bool(loop.consumer and loop.consumer.paused()), timeout=FULL_POLL_S + 5)  # stalled: paused
        await asyncio.sleep(1.0)
        assert loop.consumer.assignment(), "a stalled member stays in its group"
        await drain(150)
    finally:
        await loop.stop()
    assert loop.largest <= 20
    assert all(offsets == sorted(offsets) for offsets in taken.values())
    assert sorted(o for offsets in taken.values() for o in offsets) == sorted(
        o for p in range(PARTITIONS) for o in range(len(taken[p]))) and sum(map(len, taken.values())) == 300
