"""credits worker: the ledger. Debits accepted packs, refunds failed images, settles packs.

Wiring only; the logic is in handlers.py, the money in ledger.py.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import faust

from services.credits import handlers
from services.credits.ledger import Ledger
from services.credits.settings import Settings
from shared.events import Event, PackRequested
from shared.kafka import Outgoing, Publisher
from shared.worker import guard, make_app, on_lifecycle, raw_topic


def build(settings: Settings) -> faust.App:
    app = make_app("credits", settings, settings.credits_port)
    t = settings.topics
    ledger = Ledger(settings.database_url)
    publisher = Publisher(settings.kafka_bootstrap_servers, "packline-credits")
    # SQLite has one writer; PostgreSQL row locks let several threads work at once.
    executor = ThreadPoolExecutor(max_workers=1 if settings.database_url.startswith("sqlite") else 8)

    async def run(fn: Callable[..., list[Outgoing]], *args: Any) -> None:
        loop = asyncio.get_running_loop()
        messages = await loop.run_in_executor(executor, functools.partial(fn, *args))
        await publisher.send(messages)

    ledger.create_schema()
    on_lifecycle(app, publisher.start, publisher.stop)

    async def requested(ev: Event, _msg: Any) -> None:
        assert isinstance(ev, PackRequested)
        await run(handlers.on_pack_requested, ev, ledger, t, settings.price_listing, settings.price_aplus)

    async def result(ev: Event, _msg: Any) -> None:
        await run(handlers.on_image_result, ev, ledger, t)

    async def command(ev: Event, _msg: Any) -> None:
        await run(handlers.on_command, ev, ledger, t)

    @app.timer(settings.redrive_every_s)
    async def redrive() -> None:
        try:
            await run(handlers.redrive, ledger, t, settings.redrive_after_s)
        except Exception:
            logging.getLogger("packline.credits").exception("redrive failed; next round retries")

    @app.agent(raw_topic(app, t.packs_requested), name="packs-requested")
    async def packs_requested(stream: Any) -> None:
        async for event in stream.events():
            await guard(event, (PackRequested,), requested, publisher, settings)

    @app.agent(raw_topic(app, t.images_results), name="images-results")
    async def images_results(stream: Any) -> None:
        async for event in stream.events():
            await guard(event, handlers.RESULTS, result, publisher, settings)

    @app.agent(raw_topic(app, t.credits_commands), name="credits-commands")
    async def credits_commands(stream: Any) -> None:
        async for event in stream.events():
            await guard(event, handlers.COMMANDS, command, publisher, settings)

    return app


def main() -> None:
    build(Settings()).main()
