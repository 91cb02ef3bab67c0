"""Fair sharing: one user's backlog does not hold back another user's pack, and
the provider's images-per-minute limit holds for the whole deployment, across processes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from shared.client import request_pack
from shared.consumer import read_from_start
from shared.events import PackStatus, Product, decode
from shared.kafka import Publisher
from tests.fake_images_api import FakeImagesApi
from tests.harness import RunningStack

pytestmark = pytest.mark.e2e
TERMINAL = {"COMPLETED", "PARTIAL", "FAILED", "REJECTED"}


class PackLog:
    """Every pack status seen on packs.status, with when this test saw it."""

    def __init__(self) -> None:
        self.seen: dict[str, dict[str, float]] = {}

    def count(self, packs: list[str], status: str | set[str]) -> int:
        wanted = {status} if isinstance(status, str) else status
        return sum(1 for p in packs if wanted & self.seen.get(p, {}).keys())

    async def wait(self, packs: list[str], status: str | set[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.count(packs, status) < len(packs):
            assert time.monotonic() < deadline, f"{self.count(packs, status)}/{len(packs)} packs reached {status}"
            await asyncio.sleep(0.02)


@asynccontextmanager
async def pack_log(s: RunningStack) -> AsyncIterator[PackLog]:
    log = PackLog()
    consumer, _ = await read_from_start(s.kafka, s.topics.packs_status, "fairness-test")

    async def follow() -> None:
        async for record in consumer:
            event = decode(record.value)
            if isinstance(event, PackStatus):
                log.seen.setdefault(str(event.pack_id), {}).setdefault(event.status, time.monotonic())

    task = asyncio.create_task(follow())
    try:
        yield log
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await consumer.stop()


async def test_a_single_pack_does_not_wait_behind_another_user_s_fifty(kafka_bootstrap: str, tmp_path: Path) -> None:
    # Four images at a time, 200 ms each: the big user's 300 images take about 15 s.
    with RunningStack.started(
        kafka_bootstrap, tmp_path, LOCAL_IMAGE_LATENCY_MS="200", GENERATION_CONCURRENCY="4",
    ) as s:
        async with pack_log(s) as log:
            big, small = await s.create_user(credits=300), await s.create_user(credits=6)
            publisher = Publisher(s.kafka, "fairness-test")
            await publisher.start()
            try:
                # Straight to Kafka, as a batch integration would: the api's per-user rate limit
                # would (rightly) refuse 50 requests in one second.
                big_packs = [
                    await request_pack(publisher, big, Product(name=f"Bulk item {i}"), topics=s.topics) for i in range(50)
                ]
            finally:
                await publisher.stop()
            await log.wait(big_packs, "PROCESSING", timeout=60)  # all 300 jobs are queued now
            outstanding_at_submit = 50 - log.count(big_packs, TERMINAL)

            submitted = time.monotonic()
            small_pack = (await s.post_pack(small)).json()["pack_id"]
            await log.wait([small_pack], TERMINAL, timeout=60)
            waited = log.seen[small_pack]["COMPLETED"] - submitted
            outstanding_at_small_done = 50 - log.count(big_packs, TERMINAL)

            await log.wait(big_packs, TERMINAL, timeout=120)
            big_took = max(log.seen[p]["COMPLETED"] for p in big_packs) - submitted
            print(f"\nsmall pack: {waited * 1000:.0f} ms from POST to COMPLETED; big user's packs outstanding: "
                  f"{outstanding_at_submit} at submit, {outstanding_at_small_done} when it completed; "
                  f"big backlog drained {big_took:.1f} s after submit")
            # In log order the small pack would finish with (or after) most of the big backlog; taking
            # turns, it finishes while at least half of that backlog is still waiting.
            assert outstanding_at_small_done >= outstanding_at_submit / 2
            assert log.count(big_packs, "COMPLETED") == 50
            assert await s.balance(big) == 0 and await s.balance(small) == 0


async def test_provider_limit_holds_across_two_generation_processes(kafka_bootstrap: str, tmp_path: Path) -> None:
    per_minute = 600  # ten calls a second for the whole deployment
    with FakeImagesApi.running() as fake, RunningStack.started(
        kafka_bootstrap, tmp_path, services=("credits", "generation-1", "generation-2", "api", "notifier"),
        IMAGE_BACKEND="openai", OPENAI_API_KEY="test-key", OPENAI_BASE_URL=fake.base_url,
        IMAGES_PER_MINUTE=str(per_minute), GENERATION_CONCURRENCY="16",
    ) as s:
        async with pack_log(s) as log:
            await s.shares_settled(["generation-1", "generation-2"])
            user = await s.create_user(credits=30)
            packs = [(await s.post_pack(user)).json()["pack_id"] for _ in range(5)]
            await log.wait(packs, TERMINAL, timeout=120)
            assert log.count(packs, "COMPLETED") == 5
            calls = sorted(r["at"] for r in fake.requests)
            assert len(calls) == 30
            # Each process may start with one call at once (burst 1), then calls are spaced:
            # in any window of w seconds at most w * rate + 2 calls, however fast the machine.
            rate = per_minute / 60
            worst = max(sum(1 for t in calls[i:] if t - calls[i] < 1.0) for i in range(len(calls)))
            span = calls[-1] - calls[0]
            print(f"\n30 provider calls over {span:.2f} s (limit {rate:.0f}/s); busiest 1 s window: {worst} calls")
            assert worst <= rate + 2
            assert span >= (len(calls) - 2) / rate - 0.05
