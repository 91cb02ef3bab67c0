"""generation worker: fans accepted packs out to image jobs and runs them.

Wiring only: logic in handlers.py, the job runner in jobs.py, the fair job scheduler that
reads images.jobs in consumer.py (its pure parts in scheduling.py), claims on images in flight
in claims.py; the retry tiers' mover is shared with the webhook deliverer (shared/retry.py).
"""

from __future__ import annotations

import asyncio
import contextlib

from fastapi import FastAPI

from services.generation import handlers
from services.generation.backends import make_backend
from services.generation.cancels import CancelFeed
from services.generation.consumer import JobScheduler
from services.generation.control import ControlFeed
from services.generation.jobs import JobRunner
from services.generation.scheduling import ProviderLimiter
from services.generation.settings import Settings
from shared.consumer import OrderedConsumer, Record
from shared.events import PackAccepted
from shared.images import open_image_store
from shared.kafka import Publisher
from shared.metrics import KafkaGauges
from shared.poison import DeadLetters
from shared.retry import RetryForwarder
from shared.topics import IMAGES_JOBS, PACKS_ACCEPTED
from shared.worker import Route, dispatch, every, worker_app


def build(settings: Settings) -> FastAPI:
    t = settings.topics
    publisher = Publisher(settings.kafka, "packline-generation")
    policy = handlers.RetryPolicy(settings.retry_max_attempts, settings.retry_base_delay_s, settings.retry_max_delay_s)
    limiter = ProviderLimiter(settings.images_per_minute, settings.images_burst)
    store = open_image_store(settings, pool=settings.generation_concurrency)
    runner = JobRunner(make_backend(settings), store, publisher, t, policy, limiter)
    scheduler = JobScheduler(
        settings, runner, limiter, publisher, concurrency=settings.generation_concurrency,
        prefetch=settings.generation_prefetch, shutdown_grace_s=settings.generation_shutdown_grace_s,
    )
    forwarder = RetryForwarder(settings.kafka, f"{settings.topic_prefix}packline-generation-retry", t, publisher,
                               tiers=t.retry_topics, target=IMAGES_JOBS)
    cancels = CancelFeed(settings.kafka, t.packs_cancelled, runner)
    cancels.dead_letters = DeadLetters(publisher, t)
    control = ControlFeed(settings.kafka, t.generation_control, limiter)
    control.dead_letters = cancels.dead_letters

    async def accepted(ev: PackAccepted, _record: Record) -> None:
        jobs = handlers.jobs_of(ev)
        messages = handlers.fan_out(jobs, t)
        partition = await publisher.partition_for(t.images_jobs, messages[0].key)  # one key: the pack's
        for m in messages:
            m.partition = partition
        await publisher.enqueue(messages)  # acked before the batch is committed
        scheduler.start_early(jobs, partition)

    topics, one = dispatch([Route(PACKS_ACCEPTED, accepted)], publisher, settings)
    packs = OrderedConsumer(
        settings.kafka, f"{settings.topic_prefix}packline-generation", topics, one,
        before_commit=publisher.flush,
    )

    gauges = KafkaGauges(
        settings.kafka, {packs.group: topics, scheduler.group: [scheduler.topic], forwarder.group: t.retry_topics},
        dead_letters=[t.images_dlq, t.invalid_dlq], retry_group=forwarder.group,
    )
    gauging: asyncio.Task[None] | None = None

    async def start() -> None:
        nonlocal gauging
        await publisher.start()
        await cancels.start()
        await control.start()
        with contextlib.suppress(TimeoutError):  # jobs of packs cancelled while this process was away are not started
            await asyncio.wait_for(cancels.ready.wait(), 30)
        with contextlib.suppress(TimeoutError):  # a process started during an outage starts paused
            await asyncio.wait_for(control.ready.wait(), 30)
        await scheduler.start()
        await forwarder.start()
        await packs.start()
        gauging = every(settings.metrics_every_s, gauges.report, "consumer lag")

    async def stop() -> None:
        if gauging is not None:
            gauging.cancel()
        await gauges.stop()
        await packs.stop()
        await forwarder.stop()
        await scheduler.stop()
        await control.stop()
        await cancels.stop()
        await publisher.stop()

    return worker_app("generation", start, stop)
