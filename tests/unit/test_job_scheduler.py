"""The job scheduler's worker pool (services/generation/consumer.py) in memory: a copy of a
job already running here, read again after a rebalance, waits outside the pool; a job its
own fan-out started early runs once, and its record is then settled without a call."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest
from aiokafka import TopicPartition

from services.generation.consumer import JobScheduler, Queued
from services.generation.scheduling import ProviderLimiter
from shared.consumer import Record
from shared.images import LocalImageStore
from shared.settings import CommonSettings
from tests.unit.test_job_claims import FakePublisher, GatedBackend, job, runner, until

TP = TopicPartition(CommonSettings().topics.images_jobs, 0)


class Owner:
    """The consumer's side the scheduler asks: which partitions it owns."""

    def assignment(self) -> set[TopicPartition]:
        return {TP}


def queued(ev: Any, offset: int) -> Queued:
    return Queued(TP, cast(Record, type("R", (), {"topic": TP.topic, "partition": 0, "offset": offset, "headers": []})()), ev)


async def test_a_copy_of_a_running_job_does_not_hold_a_worker(tmp_path: Path) -> None:
    backend = GatedBackend()
    r = runner(LocalImageStore(tmp_path, "http://api"), backend)
    scheduler = JobScheduler(CommonSettings(), r, ProviderLimiter(0), cast(Any, FakePublisher()),
                             concurrency=2, prefetch=10, shutdown_grace_s=1)
    scheduler.consumer = cast(Any, Owner())
    workers = [asyncio.create_task(scheduler._work()) for _ in range(2)]
    try:
        a, b = job(), job().model_copy(update={"user_id": "bob"})
        for offset, ev in enumerate([a, a, b]):  # a, its copy read again, then another user's job
            scheduler.offsets.fetched(TP, offset)
            scheduler.queue.put(ev.user_id, queued(ev, offset))
            if offset == 0:
                await until(lambda: backend.calls == 1)  # a is at the provider
        await until(lambda: backend.calls == 2)  # b started on the other worker while a still runs
        assert len(scheduler._waiting) == 1
        backend.gate.set()
        await until(lambda: scheduler.offsets.committable() == {TP: 3})  # the copy is done with its run
        assert backend.calls == 2, "the copy paid the provider again"
    finally:
        for w in workers:
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)


@pytest.fixture
async def scheduler(tmp_path: Path) -> AsyncIterator[tuple[JobScheduler, GatedBackend]]:
    backend = GatedBackend()
    r = runner(LocalImageStore(tmp_path, "http://api"), backend)
    s = JobScheduler(CommonSettings(), r, ProviderLimiter(0), cast(Any, FakePublisher()), concurrency=1, prefetch=10, shutdown_grace_s=1)
    s.consumer = cast(Any, Owner())
    worker = asyncio.create_task(s._work())
    yield s, backend
    worker.cancel()
    await asyncio.gather(worker, return_exceptions=True)


async def test_a_job_started_by_its_own_fan_out_runs_once_and_its_record_is_then_settled(
    scheduler: tuple[JobScheduler, GatedBackend],
) -> None:
    s, backend = scheduler
    a = job()
    s.start_early([a], 0)
    await until(lambda: backend.calls == 1)  # at the provider before its record was read
    backend.gate.set()
    await until(lambda: s.runner.finished_here(a))
    published = len(cast(FakePublisher, s.runner.publisher).sent)
    s.offsets.fetched(TP, 0)  # its record, read now
    s.queue.put(a.user_id, queued(a, 0))
    await until(lambda: s.offsets.committable() == {TP: 1})
    assert backend.calls == 1, "the record paid the provider again"
    assert len(cast(FakePublisher, s.runner.publisher).sent) == published, "the record reported the image again"


async def test_a_job_of_a_partition_read_elsewhere_waits_for_its_record(
    scheduler: tuple[JobScheduler, GatedBackend],
) -> None:
    s, backend = scheduler
    s.start_early([job()], 1)  # partition 1: another process's
    await asyncio.sleep(0.05)
    assert backend.calls == 0 and len(s.queue) == 0
