"""The provider switch in memory: a paused limiter starts no call until resumed; the ops
console's pure parts (dead-letter filters, the partition a key is scanned in)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from aiokafka.partitioner import DefaultPartitioner

from services.api.ops_kafka import partition_for
from services.cli.redrive import Entry
from services.generation.scheduling import ProviderLimiter
from services.ops.deadletters import matching, user_of


async def test_a_paused_limiter_holds_every_call_until_resumed() -> None:
    limiter = ProviderLimiter(0)
    limiter.pause()
    started: list[int] = []

    async def call(n: int) -> None:
        await limiter.acquire()
        started.append(n)

    calls = [asyncio.create_task(call(n)) for n in range(5)]
    for _ in range(20):  # let every task run as far as it can
        await asyncio.sleep(0)
    assert started == [] and not any(c.done() for c in calls) and limiter.held == 5
    limiter.resume()
    await asyncio.gather(*calls)
    assert sorted(started) == [0, 1, 2, 3, 4] and not limiter.paused and limiter.held == 0


async def test_a_pause_while_waiting_for_a_slot_still_holds_the_call() -> None:
    now = [0.0]
    limiter = ProviderLimiter(60, clock=lambda: now[0])  # one call a second
    limiter.reserve()  # the next slot is a second away
    waiting = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0)
    limiter.pause()
    now[0] = 5.0
    await asyncio.sleep(1.05)  # the slot's wait is over; the pause is not
    assert not waiting.done()
    limiter.resume()
    await asyncio.wait_for(waiting, 5)


def test_keys_are_scanned_in_the_partition_the_producer_chose() -> None:
    for key in (b"0b6f6d1e-4b8e-4c1a-9e0f-1a2b3c4d5e6f", b"u-1234", b"provider"):
        for n in (1, 3, 12):
            assert partition_for(key, n) == DefaultPartitioner()(key, list(range(n)), list(range(n)))


def entry(n: int, pack: str, user: str, error_type: str, failed: datetime | None) -> Entry:
    return Entry(id=f"dlq:0:{n}", topic="images.dlq", pack_id=pack, image_id="main", original_topic="images.jobs",
                 error_type=error_type, error="boom", attempts=3, first_failed_at=failed.isoformat() if failed else None,
                 replayable=True, payload=f'{{"user_id": "{user}", "pack_id": "{pack}"}}')


def test_dead_letter_filters_combine() -> None:
    now = datetime(2026, 1, 1, 12, tzinfo=UTC).timestamp()
    entries = [
        entry(1, "p1", "alice", "PermanentImageError", datetime(2026, 1, 1, 11, 59, tzinfo=UTC)),
        entry(2, "p1", "alice", "TransientImageError", datetime(2026, 1, 1, 10, tzinfo=UTC)),
        entry(3, "p2", "bob", "PermanentImageError", None),
    ]
    ids = lambda found: [e.id for e in found]  # noqa: E731
    assert ids(matching(entries, pack="p1", now=now)) == ["dlq:0:1", "dlq:0:2"]
    assert ids(matching(entries, error_type="PermanentImageError", now=now)) == ["dlq:0:1", "dlq:0:3"]
    assert ids(matching(entries, user="bob", now=now)) == ["dlq:0:3"]
    # Unknown age is left out once an age is asked for.
    assert ids(matching(entries, max_age_s=3600, now=now)) == ["dlq:0:1"]
    assert ids(matching(entries, pack="p1", error_type="TransientImageError", max_age_s=3 * 3600, now=now)) == ["dlq:0:2"]
    assert user_of(Entry(id="invalid:0:1", topic="invalid.dlq", pack_id=None, image_id=None, original_topic="x",
                         error_type=None, error=None, attempts=None, first_failed_at=None, replayable=True,
                         payload="not json")) is None
