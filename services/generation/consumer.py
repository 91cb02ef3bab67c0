"""images.jobs, consumed by hand: a plain aiokafka consumer (its own group) reads jobs
ahead into a per-user fair queue, a fixed pool of workers runs them, and each partition's
offset is committed only up to its oldest unfinished job.

Why not an OrderedConsumer like the other topics: served in log order, one user's 50 packs
queued ahead of another user's single pack would make that pack wait for all 300 images.
Jobs here finish out of order, so the commit point is tracked per job (OffsetTracker).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from aiokafka import TopicPartition
from prometheus_client import Counter, Gauge

from services.generation.jobs import JobRunner
from services.generation.scheduling import ProviderLimiter
from shared import tracing
from shared.consumer import ConsumerLoop, Rebalance, Record, group_member
from shared.events import ImageJob
from shared.fairness import FairQueue, OffsetTracker
from shared.kafka import Publisher
from shared.settings import CommonSettings
from shared.topics import IMAGES_JOBS
from shared.worker import decode_or_dead_letter, handle

log = logging.getLogger("packline.scheduler")
QUEUED = Gauge("packline_jobs_queued", "image jobs read ahead and waiting for a worker")
USERS = Gauge("packline_jobs_queued_users", "users with jobs waiting")
EARLY = Counter("packline_jobs_started_early_total", "jobs queued by their own fan-out before their record was read")
SHARE = Gauge("packline_provider_share", "this process's fraction of the images-per-minute limit")


def group_id(topic_prefix: str) -> str:
    return f"{topic_prefix}packline-generation-jobs"


@dataclass(frozen=True)
class Queued:
    tp: TopicPartition
    record: Record | None  # None: started early, before its record is read (start_early)
    job: ImageJob


class JobScheduler(ConsumerLoop):
    name = "images-jobs"
    commit_every_s = 0.5

    def __init__(
        self, settings: CommonSettings, runner: JobRunner, limiter: ProviderLimiter, publisher: Publisher, *,
        concurrency: int, prefetch: int, shutdown_grace_s: float,
    ) -> None:
        self.settings, self.runner, self.limiter, self.publisher = settings, runner, limiter, publisher
        self.topic = settings.topics.name(IMAGES_JOBS)
        self.group = group_id(settings.topic_prefix)
        self.concurrency, self.prefetch, self.shutdown_grace_s = concurrency, prefetch, shutdown_grace_s
        self.queue: FairQueue[Queued] = FairQueue()
        self.offsets: OffsetTracker[TopicPartition] = OffsetTracker()
        self.running: dict[asyncio.Task[None], Queued] = {}
        self._idle = asyncio.Event()  # set while no job is running
        self._workers: list[asyncio.Task[None]] = []
        self._waiting: set[asyncio.Task[None]] = set()  # copies of running jobs, see _wait_outside
        self._last_commit = 0.0

    async def start(self) -> None:
        self.consumer = group_member(self.settings.kafka, self.group)
        await self.consumer.start()
        self.consumer.subscribe([self.topic], listener=Rebalance(revoked=self.on_revoked, assigned=self.on_assigned))
        self._workers = [asyncio.create_task(self._work(), name=f"images-jobs-{i}") for i in range(self.concurrency)]
        self.spawn()

    async def stop(self) -> None:
        """Stop reading, give the images in flight `shutdown_grace_s` to finish, then cancel
        the rest: whatever is unfinished is not committed, so the group hands it out again."""
        await self.halt()
        self.queue.remove(lambda _q: True)
        if self.running:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), self.shutdown_grace_s)
        for task in [*self._workers, *self._waiting]:
            task.cancel()
        await asyncio.gather(*self._workers, *self._waiting, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self._commit(force=True)
        await super().stop()

    async def step(self) -> None:
        assert self.consumer is not None
        await self.read_ahead(self.queue.__len__, self.prefetch)  # past `prefetch` queued jobs, wait for the workers
        batches = await self.consumer.getmany(timeout_ms=200, max_records=max(1, self.prefetch - len(self.queue)))
        for tp, records in batches.items():
            for record in records:
                self.offsets.fetched(tp, record.offset)
                typed = await decode_or_dead_letter(record, IMAGES_JOBS, self.publisher, self.settings)
                if typed is None or self.runner.finished_here(typed):
                    self.offsets.done(tp, record.offset)  # on invalid.dlq now, or run here already (start_early)
                else:
                    self.queue.put(typed.user_id, Queued(tp, record, typed))
        QUEUED.set(len(self.queue))
        USERS.set(self.queue.users)
        await self._commit()

    def start_early(self, jobs: list[ImageJob], partition: int) -> None:
        """Jobs this process is fanning out to `partition`: they join the fair queue now, a
        round trip through Kafka before their records come back, if that partition is read
        here and the queue has room (under load the records are the queue). Each record,
        read later, finds its run in flight or ended here and is settled without a second
        call. Not waiting for the records' acks is safe: a fan-out that Kafka refuses is
        not committed and runs again, and the effects of a run are keyed like any other."""
        tp = TopicPartition(self.topic, partition)
        if tracing.enabled() or self.consumer is None or tp not in self.consumer.assignment():
            return  # traced: a job's span starts from its record
        for job in jobs:
            if len(self.queue) >= self.prefetch:
                return
            EARLY.inc()
            self.queue.put(job.user_id, Queued(tp, None, job))

    async def _work(self) -> None:
        while True:
            item = await self.queue.get()
            if self.runner.is_running(item.job):
                if item.record is not None:
                    self._wait_outside(item)
                continue
            task = asyncio.current_task()
            assert task is not None
            self.running[task] = item
            self._idle.clear()
            try:
                if item.record is None:
                    await self._run_early(item.job)
                else:
                    await handle(item.job, item.record, self._job, self.publisher, self.settings)
                    self.offsets.done(item.tp, item.record.offset)
            finally:
                del self.running[task]
                if not self.running:
                    self._idle.set()

    def _wait_outside(self, item: Queued) -> None:
        """A copy of a job running here (read again after a rebalance) waits for that run
        outside the pool: a worker held by it could not start another user's job meanwhile,
        and a rebalance while many calls hang would leave the pool full of waiting copies."""
        assert item.record is not None
        record = item.record

        async def wait() -> None:
            if await self.runner.settled_by_running(item.job):
                self.offsets.done(item.tp, record.offset)
            elif self.consumer is not None and item.tp in self.consumer.assignment():
                self.queue.put(item.job.user_id, item)  # that run died, or this is a later attempt: run it
        task = asyncio.create_task(wait(), name=f"images-jobs-copy-{record.offset}")
        self._waiting.add(task)
        task.add_done_callback(self._waiting.discard)

    async def _run_early(self, job: ImageJob) -> None:
        try:
            await self.runner.run(job, self.topic, ())
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the record, read next, runs it again and handles the failure
            log.info("job %s/%s started early failed: %r", job.pack_id, job.image_id, exc)

    async def _job(self, ev: ImageJob, record: Record) -> None:
        await self.runner.run(ev, record.topic, record.headers)

    async def _commit(self, force: bool = False) -> None:
        assert self.consumer is not None
        now = time.monotonic()
        if not force and now - self._last_commit < self.commit_every_s:
            return
        self._last_commit = now
        offsets = self.offsets.committable(self.consumer.assignment())
        if not offsets:
            return
        try:
            await self.consumer.commit(offsets)
            self.offsets.committed(offsets)
        except Exception as exc:  # a rebalance in progress: the next round commits again
            log.info("commit of %s deferred: %r", offsets, exc)

    async def on_revoked(self, revoked: list[TopicPartition]) -> None:
        # Last chance to commit what is finished; queued jobs of these partitions go back to
        # the group (the new owner reads them from the committed offset).
        with contextlib.suppress(Exception):
            await self._commit(force=True)
        gone = set(revoked)
        await self.runner.claim_running([q.job for q in self.running.values() if q.tp in gone])
        dropped = self.queue.remove(lambda q: q.tp in gone)
        self.offsets.forget(revoked)
        if dropped:
            log.info("handed back %d queued jobs of %s", len(dropped), sorted(tp.partition for tp in revoked))

    async def on_assigned(self, assigned: list[TopicPartition]) -> None:
        assert self.consumer is not None
        owned = self.consumer.assignment()
        total = len(self.consumer.partitions_for_topic(self.topic) or ()) or self.settings.topic_partitions
        self.limiter.set_share(len(owned), total)
        SHARE.set(len(owned) / total)
        log.info("images.jobs partitions %s; provider share %.2f", sorted(tp.partition for tp in owned), self.limiter.share)
