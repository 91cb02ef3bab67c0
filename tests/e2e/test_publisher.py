"""shared.kafka.Publisher on the real broker: the partition it names for a key before
sending is the one the producer sends that key to."""

from __future__ import annotations

import pytest

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
