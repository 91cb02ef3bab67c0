"""What the two workers (credits, generation) share: the process around them, and the
guard every message goes through.

A worker is a small FastAPI app served by uvicorn, like the api and the notifier: its
lifespan starts the consumers and stops them on SIGTERM, and it answers /healthz and
/metrics. Messages are read by `shared.consumer.OrderedConsumer`; effects go through
`shared.kafka.Publisher` and are acknowledged before any offset past their message is
committed. Handlers are idempotent, so redelivery is harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from fastapi import FastAPI
from prometheus_client import Counter

from shared import tracing
from shared.consumer import Record
from shared.errors import BrokerUnavailable, InvalidMessage
from shared.events import Event, decode
from shared.http import health_router
from shared.kafka import Publisher, invalid_message
from shared.settings import CommonSettings
from shared.topics import TopicSpec

log = logging.getLogger("packline.worker")

E = TypeVar("E", bound=Event)
MESSAGES = Counter("packline_messages_total", "messages handled", ["topic", "outcome"])
UNEXPECTED_RETRIES = 5


def worker_app(name: str, start: Callable[[], Awaitable[None]], stop: Callable[[], Awaitable[None]]) -> FastAPI:
    """The process of a worker: `start` before /healthz answers, `stop` on shutdown."""

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await start()
        try:
            yield
        finally:
            await stop()

    app = FastAPI(title=f"packline {name}", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.include_router(health_router(name))
    return app


def every(seconds: float, job: Callable[[], Awaitable[None]], name: str) -> asyncio.Task[None]:
    """Run `job` every `seconds` until cancelled; a failed round is logged, the next one runs."""

    async def loop() -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await job()
            except Exception:
                log.exception("%s failed; the next round retries", name)

    return asyncio.create_task(loop(), name=name)


@dataclass(frozen=True)
class Route(Generic[E]):
    """One topic a consumer reads, and the handler its events go to, typed by the topic's
    registry entry: a handler never sees an event type its topic does not carry."""

    spec: TopicSpec[E]
    handler: Callable[[E, Record], Awaitable[None]]


def dispatch(
    routes: Sequence[Route[Any]], publisher: Publisher, settings: CommonSettings,
) -> tuple[list[str], Callable[[Record], Awaitable[None]]]:
    """The topic names to subscribe to, and the function each of their records goes through."""
    by_name = {settings.topics.name(r.spec): r for r in routes}

    async def one(record: Record) -> None:
        await guard(record, by_name[record.topic], publisher, settings)

    return list(by_name), one


async def guard(record: Record, route: Route[E], publisher: Publisher, settings: CommonSettings) -> None:
    """The whole path of one consumed message: decode, then handle."""
    typed = await decode_or_dead_letter(record, route.spec, publisher, settings)
    if typed is not None:
        await handle(typed, record, route.handler, publisher, settings)


async def decode_or_dead_letter(
    msg: Record, spec: TopicSpec[E], publisher: Publisher, settings: CommonSettings,
) -> E | None:
    """The typed event, or None once a malformed message is safely on invalid.dlq."""
    try:
        return decode(msg.value, spec.events)
    except InvalidMessage as exc:
        await _dead_letter(publisher, settings, msg, str(exc), "InvalidMessage")
        return None


async def handle(
    typed: E,
    msg: Record,
    handler: Callable[[E, Record], Awaitable[None]],
    publisher: Publisher,
    settings: CommonSettings,
) -> None:
    """Run the handler and never let one message stop the partition: an unexpected error
    is retried a few times (a database blip), then dead-lettered with its reason rather
    than looping forever; a Kafka outage is waited out."""
    attempt = 0
    while True:
        attempt += 1
        try:
            with tracing.consumed(msg):
                await handler(typed, msg)
            MESSAGES.labels(msg.topic, "ok").inc()
            return
        except asyncio.CancelledError:
            raise
        except InvalidMessage as exc:
            await _dead_letter(publisher, settings, msg, str(exc), "InvalidMessage")
            return
        except BrokerUnavailable:
            # Not this message's fault, and nothing can progress without Kafka: wait for it,
            # holding the offset, for as long as it takes.
            log.warning("Kafka unavailable while handling %s[%s]@%s; waiting", msg.topic, msg.partition, msg.offset)
            await asyncio.sleep(min(0.5 * attempt, 5.0))
        except Exception as exc:
            log.exception("handler failed on %s[%s]@%s (attempt %d)", msg.topic, msg.partition, msg.offset, attempt)
            if attempt == UNEXPECTED_RETRIES:
                await _dead_letter(publisher, settings, msg, f"{exc!r}", type(exc).__name__)
                return
            await asyncio.sleep(min(0.2 * 2**attempt, 5.0))


def handled(topic: str, count: int) -> None:
    """Messages a batch handler took in at once (`handle` counts them one by one)."""
    MESSAGES.labels(topic, "ok").inc(count)


async def _dead_letter(publisher: Publisher, settings: CommonSettings, msg: Record, reason: str, error_type: str) -> None:
    log.warning("dead-lettering %s[%s]@%s: %s", msg.topic, msg.partition, msg.offset, reason)
    MESSAGES.labels(msg.topic, "invalid").inc()
    dead = invalid_message(
        settings.topics, topic=msg.topic, partition=msg.partition, offset=msg.offset,
        key=msg.key, value=msg.value, reason=reason, error_type=error_type, headers=list(msg.headers or ()),
    )
    attempt = 0
    while True:  # the dead letter must land before the offset moves on
        try:
            await publisher.send([dead])
            return
        except BrokerUnavailable:
            attempt += 1
            await asyncio.sleep(min(0.5 * attempt, 5.0))
