"""Small Kafka conversations for the ops CLI: send a command, wait for its reply;
read a topic from the beginning to its current end; publish a few messages."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager
from typing import TypeVar

from aiokafka import ConsumerRecord

from shared.consumer import read_from_start
from shared.errors import InvalidMessage
from shared.events import Event, decode
from shared.kafka import KafkaConfig, Outgoing, Publisher

E = TypeVar("E", bound=Event)


async def request_reply(
    kafka: KafkaConfig, command: Outgoing, reply_topic: str, reply: type[E], match: Callable[[E], bool],
    timeout: float = 30.0,
) -> E:
    """Send `command`, then wait for the first `reply` event on `reply_topic` that `match`es."""
    consumer, tps = await read_from_start(kafka, reply_topic, "packline-cli")
    try:
        await consumer.seek_to_end(*tps)
        for tp in tps:  # pin the positions now, so the reply cannot land before we look
            await consumer.position(tp)
        async with open_publisher(kafka) as publisher:
            await publisher.send([command])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            for messages in batches.values():
                for m in messages:
                    try:
                        event = decode(m.value, (reply,))
                    except InvalidMessage:
                        continue
                    if match(event):
                        return event
        raise TimeoutError(f"no reply on {reply_topic} within {timeout:.0f}s (is the credits service running?)")
    finally:
        await consumer.stop()


async def read_all(kafka: KafkaConfig, topic: str) -> list[ConsumerRecord[bytes, bytes]]:
    """Every message currently in `topic`, in partition order."""
    consumer, tps = await read_from_start(kafka, topic, "packline-cli")
    try:
        ends = await consumer.end_offsets(tps)
        records: list[ConsumerRecord[bytes, bytes]] = []
        pending = {tp for tp in tps if ends[tp] > 0}
        for tp in list(pending):
            if await consumer.position(tp) >= ends[tp]:
                pending.discard(tp)
        while pending:
            batches = await consumer.getmany(*pending, timeout_ms=500)
            for tp, messages in batches.items():
                records.extend(m for m in messages if m.offset < ends[tp])
                if await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
        return records
    finally:
        await consumer.stop()


def events(records: Iterable[ConsumerRecord[bytes, bytes]], accept: tuple[type[E], ...]) -> Iterator[E]:
    """The records that decode to one of the `accept` types; the rest are skipped."""
    for r in records:
        try:
            yield decode(r.value, accept)
        except InvalidMessage:
            continue


async def read_events(kafka: KafkaConfig, topic: str, accept: tuple[type[E], ...]) -> list[E]:
    """Every event of the `accept` types currently in `topic`."""
    return list(events(await read_all(kafka, topic), accept))


@asynccontextmanager
async def open_publisher(kafka: KafkaConfig, client_id: str = "packline-cli") -> AsyncIterator[Publisher]:
    """A started publisher, stopped on the way out."""
    publisher = Publisher(kafka, client_id)
    await publisher.start()
    try:
        yield publisher
    finally:
        await publisher.stop()
