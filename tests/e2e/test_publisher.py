"""shared.kafka.Publisher on the real broker: the partition it names for a key before
sending is the one the producer sends that key to; while Kafka is away every call fails
with BrokerUnavailable in bounded time (never hangs), and the next call after it is back
succeeds."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from shared.devbroker import Broker, free_port
from shared.errors import BrokerUnavailable
from shared.kafka import KafkaConfig, Outgoing, Publisher
from tests.e2e.test_ordered_consumer import new_topic

pytestmark = pytest.mark.e2e


async def test_partition_for_names_the_partition_a_key_is_sent_to(kafka_bootstrap: str) -> None:
    topic = await new_topic(kafka_bootstrap)
    publisher = Publisher(KafkaConfig(kafka_bootstrap), "partition-test")
    await publisher.start()
    try:
        keys = [f"pack-{i}".encode() for i in range(60)]
        acks = await publisher.enqueue([Outgoing(topic, b"x", key) for key in keys], keep=False)
        await publisher.wait(acks)
        sent_to = [ack.result().partition for ack in acks]
        assert len(set(sent_to)) > 1  # the keys spread: a constant answer would not pass
        assert [await publisher.partition_for(topic, key) for key in keys] == sent_to
    finally:
        await publisher.stop()


async def test_calls_during_an_outage_fail_in_time_and_work_again_after_it(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "kafka", free_port(), free_port())
    await asyncio.to_thread(broker.start, 120)
    topic = await new_topic(broker.bootstrap)
    publisher = Publisher(KafkaConfig(broker.bootstrap), "outage-test", timeout_s=2)
    try:
        await publisher.send([Outgoing(topic, b"before", b"k")])
        await asyncio.to_thread(broker.stop)
        for _ in range(3):  # the first fails on the old producer; the next ones start new ones, and fail too
            with pytest.raises(BrokerUnavailable):
                await asyncio.wait_for(publisher.send([Outgoing(topic, b"during", b"k")]), 30)
            with pytest.raises(BrokerUnavailable):
                await asyncio.wait_for(publisher.partition_for(topic, b"k"), 30)
        await asyncio.to_thread(broker.start, 120)
        assert 0 <= await asyncio.wait_for(publisher.partition_for(topic, b"k"), 30) < 3
        await asyncio.wait_for(publisher.send([Outgoing(topic, b"after", b"k")]), 30)
    finally:
        await publisher.stop()
        await asyncio.to_thread(broker.stop)
