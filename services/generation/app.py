"""generation worker: fans accepted packs out to image jobs and runs them.

Wiring only: logic in handlers.py, the job runner in jobs.py, retry tiers in retry.py.
"""

from __future__ import annotations

from typing import Any

import faust

from services.generation import handlers
from services.generation.backends import make_backend
from services.generation.jobs import JobRunner
from services.generation.retry import RetryForwarder
from services.generation.settings import Settings
from services.generation.storage import ImageStore
from shared.events import Event, ImageJob, PackAccepted
from shared.kafka import Publisher
from shared.worker import guard, make_app, on_lifecycle, raw_topic


def build(settings: Settings) -> faust.App:
    app = make_app("generation", settings, settings.generation_port)
    t = settings.topics
    publisher = Publisher(settings.kafka_bootstrap_servers, "packline-generation")
    policy = handlers.RetryPolicy(settings.retry_max_attempts, settings.retry_base_delay_s, settings.retry_max_delay_s)
    runner = JobRunner(make_backend(settings), ImageStore(settings.images_dir, settings.api_public_url), publisher, t, policy)
    forwarder = RetryForwarder(settings.kafka_bootstrap_servers, f"{settings.topic_prefix}packline-generation-retry", t, publisher)

    async def start() -> None:
        await publisher.start()
        await forwarder.start()

    async def stop() -> None:
        await forwarder.stop()
        await publisher.stop()

    on_lifecycle(app, start, stop)

    async def accepted(ev: Event, _msg: Any) -> None:
        assert isinstance(ev, PackAccepted)
        await publisher.send(handlers.fan_out(ev, t))

    async def job(ev: Event, msg: Any) -> None:
        assert isinstance(ev, ImageJob)
        await runner.run(ev, msg.topic, msg.headers)

    @app.agent(raw_topic(app, t.packs_accepted), name="packs-accepted")
    async def packs_accepted(stream: Any) -> None:
        async for event in stream.events():
            await guard(event, (PackAccepted,), accepted, publisher, settings)

    # One actor per image in flight: the six images of a pack run side by side.
    @app.agent(raw_topic(app, t.images_jobs), name="images-jobs", concurrency=settings.generation_concurrency)
    async def images_jobs(stream: Any) -> None:
        async for event in stream.events():
            await guard(event, (ImageJob,), job, publisher, settings)

    return app
