"""credits worker: the ledger. Debits accepted packs, refunds failed images, settles packs.

Wiring only; the logic is in handlers.py, the money in ledger.py, the fair intake of pack
requests in intake.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from services.credits import handlers
from services.credits.intake import Batch, Intake
from services.credits.ledger import Ledger
from services.credits.runner import LedgerRunner
from services.credits.settings import Settings
from shared import tracing
from shared.consumer import OrderedConsumer, Record
from shared.kafka import Outgoing, Publisher
from shared.metrics import KafkaGauges
from shared.topics import CREDITS_COMMANDS, IMAGES_RESULTS, CreditsCommand, ImageResult
from shared.worker import Route, decode_or_dead_letter, dispatch, every, handle, handled, worker_app

log = logging.getLogger("packline.credits")


def build(settings: Settings) -> FastAPI:
    t = settings.topics
    ledger = Ledger(settings.database_url)
    publisher = Publisher(settings.kafka, "packline-credits")
    # Its own producer: each consumer flushes, and on a failed flush rewinds, only its own effects.
    intake_publisher = Publisher(settings.kafka, "packline-credits-intake")
    in_ledger = LedgerRunner(settings.database_url)

    async def run(fn: Callable[..., list[Outgoing]], *args: Any, items: int = 1, via: Publisher = publisher) -> None:
        """Ledger work (runner.py says where); its events leave without waiting for their acks
        (the consumer flushes them before it commits), so a partition's results do not queue
        up behind one round trip to Kafka each."""
        with tracing.span("ledger transaction", {"db.system.name": ledger.engine.dialect.name, "code.function.name": fn.__name__}):
            messages = await in_ledger(fn, *args, items=items)
        await via.enqueue(messages)

    async def requested(batch: Batch) -> None:
        await run(handlers.on_packs_requested, batch, ledger, t, settings.price_listing, settings.price_aplus,
                  items=len(batch), via=intake_publisher)

    async def result(ev: ImageResult, _record: Record) -> None:
        await run(handlers.on_image_result, ev, ledger, t)

    async def command(ev: CreditsCommand, _record: Record) -> None:
        await run(handlers.on_command, ev, ledger, t)

    async def results(records: list[Record]) -> None:
        """A poll's images.results (of every partition) in one ledger transaction; if it fails,
        each message on its own (retried, or dead-lettered with its reason). Commands one by one."""
        typed: list[tuple[Record, ImageResult]] = []
        for record in records:
            if record.topic != t.images_results:
                await one(record)
                continue
            ev = await decode_or_dead_letter(record, IMAGES_RESULTS, publisher, settings)
            if ev is not None:
                typed.append((record, ev))
        if not typed:
            return
        try:
            with tracing.per_pack([(str(ev.pack_id), record) for record, ev in typed]):
                await run(handlers.on_image_results, [ev for _, ev in typed], ledger, t, items=len(typed))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("a batch of %d results failed (%r): handling them one by one", len(typed), exc)
            for record, ev in typed:
                await handle(ev, record, result, publisher, settings)
        else:
            handled(t.images_results, len(typed))

    intake = Intake(settings, intake_publisher, requested)
    topics, one = dispatch([Route(IMAGES_RESULTS, result), Route(CREDITS_COMMANDS, command)], publisher, settings)

    async def redrive_stalled() -> None:
        await publisher.send(await in_ledger(handlers.redrive, ledger, t, settings.redrive_after_s, items=100))

    consumer = OrderedConsumer(
        settings.kafka, f"{settings.topic_prefix}packline-credits", topics, one,
        before_commit=publisher.flush, handle_batch=results, max_batch=500,
    )
    redrive: asyncio.Task[None] | None = None
    gauges = KafkaGauges(settings.kafka, {intake.group: [intake.topic], consumer.group: topics}, dead_letters=[t.invalid_dlq])
    gauging: asyncio.Task[None] | None = None

    async def start() -> None:
        nonlocal redrive, gauging
        ledger.create_schema()
        await publisher.start()
        await intake_publisher.start()
        await consumer.start()
        await intake.start()
        redrive = every(settings.redrive_every_s, redrive_stalled, "redrive")
        gauging = every(settings.metrics_every_s, gauges.report, "consumer lag")

    async def stop() -> None:
        if redrive is not None:
            redrive.cancel()
        if gauging is not None:
            gauging.cancel()
        await gauges.stop()
        await intake.stop()
        await consumer.stop()
        await intake_publisher.stop()
        await publisher.stop()
        in_ledger.shutdown()

    return worker_app("credits", start, stop)
