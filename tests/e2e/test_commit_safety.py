"""Offsets are committed only after effects: a slow image at the head of a partition holds
the commit point while the images behind it finish, so a process killed then loses nothing.
And a job that moves to another process mid-generation is not paid for twice."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from services.generation.consumer import group_id
from shared.events import decode
from tests.fake_images_api import FakeImagesApi
from tests.harness import RunningStack, rebalance_mid_generation

pytestmark = pytest.mark.e2e


async def test_kill_9_while_the_head_job_is_slow_loses_nothing(kafka_bootstrap: str, tmp_path: Path) -> None:
    with FakeImagesApi.running() as fake, RunningStack.started(
        kafka_bootstrap, tmp_path, IMAGE_BACKEND="openai", OPENAI_API_KEY="test-key", OPENAI_BASE_URL=fake.base_url,
    ) as s:
        fake.plan.append(("hang", 300))  # the first call never answers; the other five do
        user = await s.create_user(credits=10)
        pack_id = (await s.post_pack(user)).json()["pack_id"]

        deadline = time.monotonic() + 60
        while len(completed := await s.completed_images(pack_id)) < 5:
            assert time.monotonic() < deadline, f"only {len(completed)} images completed"
            await asyncio.sleep(0.2)
        jobs = [r for r in await s.records(s.topics.images_jobs) if str(decode(r.value).pack_id) == pack_id]
        [slow] = [r for r in jobs if decode(r.value).image_id not in completed]
        await asyncio.sleep(1.5)  # several commit rounds with five of six jobs done
        s.stack.signal("generation", signal.SIGKILL)
        await asyncio.to_thread(s.stack.procs["generation"].wait, 30)

        tp = TopicPartition(slow.topic, slow.partition)
        committed = await committed_offset(s, tp)
        assert committed is not None and committed <= slow.offset, "committed past the unfinished job"

        s.stack.start("generation")  # takes the slow job up again: the fake now answers at once
        final = (await s.events(pack_id, user, timeout=120))[-1].json()
        assert final["status"] == "COMPLETED" and final["charged"] == 6 and final["refunded"] == 0
        assert await s.balance(user) == 4


async def committed_offset(s: RunningStack, tp: TopicPartition) -> int | None:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=s.bootstrap, group_id=group_id(s.topics.prefix), enable_auto_commit=False,
    )
    await consumer.start()
    try:
        return await consumer.committed(tp)
    finally:
        await consumer.stop()


async def test_jobs_moved_by_a_rebalance_mid_generation_are_not_paid_twice(kafka_bootstrap: str, tmp_path: Path) -> None:
    with FakeImagesApi.running() as fake, RunningStack.started(
        kafka_bootstrap, tmp_path, services=("credits", "generation-1", "generation-2", "api", "notifier"),
        IMAGE_BACKEND="openai", OPENAI_API_KEY="test-key", OPENAI_BASE_URL=fake.base_url,
    ) as s:
        await rebalance_mid_generation(s, fake)
