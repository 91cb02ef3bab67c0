"""The job scheduler's worker pool (services/generation/consumer.py) in memory: a copy of a
job already running here, read again after a rebalance, waits outside the pool."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, cast

from aiokafka import TopicPartition

from services.generation.consumer import JobScheduler, Queued
from services.generation.scheduling import ProviderLimiter
from shared.consumer import Record
from shared.images import LocalImageStore
from shared.settings import CommonSettings
from tests.unit.test_job_claims import FakePublisher, GatedBackend, job, runner, until

TP = TopicPartition("x.images.jobs", 0)


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
