"""Small Kafka conversations for the ops CLI: send a command, wait for its reply;
read a topic from the beginning to its current end."""

from __future__ import annotations

import time
from collections.abc import Callable

from aiokafka import ConsumerRecord

from shared.errors import InvalidMessage
from shared.events import Event, decode
from shared.kafka import Outgoing, Publisher, read_from_start


async def request_reply(
    bootstrap: str, command: Outgoing, reply_topic: str, match: Callable[[Event], bool], timeout: float = 30.0,
) -> Event:
    consumer, tps = await read_from_start(bootstrap, reply_topic, "packline-cli")
    try:
        await consumer.seek_to_end(*tps)
        for tp in tps:  # pin the positions now, so the reply cannot land before we look
            await consumer.position(tp)
        publisher = Publisher(bootstrap, "packline-cli")
        await publisher.start()
        try:
            await publisher.send([command])
        finally:
            await publisher.stop()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            for messages in batches.values():
                for m in messages:
                    try:
                        event = decode(m.value)
                    except InvalidMessage:
                        continue
                    if match(event):
                        return event
        raise TimeoutError(f"no reply on {reply_topic} within {timeout:.0f}s (is the credits service running?)")
    finally:
        await consumer.stop()


async def read_all(bootstrap: str, topic: str) -> list[ConsumerRecord[bytes, bytes]]:
    """Every message currently in `topic`, in partition order."""
    consumer, tps = await read_from_start(bootstrap, topic, "packline-cli")
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
