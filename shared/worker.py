"""What the two faust workers (credits, generation) share: the app factory and the guard
every agent runs each message through.

faust consumes and commits (at_least_once); effects go through `shared.kafka.Publisher`
and are acknowledged before the guard returns, so an offset is only committed after
its effects are durable. Handlers are idempotent, so redelivery is harmless.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import faust
import mode
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest

from shared.errors import BrokerUnavailable, InvalidMessage
from shared.events import Event, decode
from shared.kafka import Publisher, invalid_message
from shared.settings import CommonSettings

log = logging.getLogger("packline.worker")

MESSAGES = Counter("packline_messages_total", "messages handled", ["topic", "outcome"])
UNEXPECTED_RETRIES = 5


def make_app(name: str, settings: CommonSettings, web_port: int) -> faust.App:
    # Per instance (several may share one VAR_DIR): the web port tells them apart.
    datadir = settings.var_dir / "faust" / f"{settings.topic_prefix}{name}-{web_port}"
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        f"{settings.topic_prefix}packline-{name}",
        broker=f"kafka://{settings.kafka_bootstrap_servers}",
        value_serializer="raw",
        key_serializer="raw",
        processing_guarantee="at_least_once",
        topic_replication_factor=1,
        topic_partitions=settings.topic_partitions,
        topic_allow_declare=False,
        web_port=web_port,
        web_bind="127.0.0.1",
        web_in_thread=False,
        datadir=str(datadir),
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=0.5,
        # A SIGKILLed member holds its partitions until its session expires: keep that short.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=1.0,
        broker_rebalance_timeout=30.0,
        producer_acks=-1,
    )

    @app.page("/metrics")
    async def metrics(web: Any, request: Any) -> Any:
        return web.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    @app.page("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        return web.json({"status": "ok", "service": name})

    return app


def on_lifecycle(app: faust.App, start: Callable[[], Awaitable[None]], stop: Callable[[], Awaitable[None]]) -> None:
    """Run `start` when the worker starts and `stop` when it shuts down."""

    @app.service
    class Lifecycle(mode.Service):
        async def on_start(self) -> None:
            await start()

        async def on_stop(self) -> None:
            await stop()


def raw_topic(app: faust.App, name: str) -> Any:
    return app.topic(name, value_type=bytes, key_type=bytes, value_serializer="raw", key_serializer="raw")


async def guard(
    event: Any,
    accept: tuple[type[Event], ...],
    handler: Callable[[Event, Any], Awaitable[None]],
    publisher: Publisher,
    settings: CommonSettings,
) -> None:
    """Decode, run the handler, and never let one message stop the partition:
    malformed -> invalid.dlq; an unexpected error is retried a few times (a database
    blip), then dead-lettered with its reason rather than looping forever."""
    msg = event.message
    try:
        typed = decode(event.value, accept)
    except InvalidMessage as exc:
        await _dead_letter(publisher, settings, msg, str(exc), "InvalidMessage")
        return
    attempt = 0
    while True:
        attempt += 1
        try:
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


async def _dead_letter(publisher: Publisher, settings: CommonSettings, msg: Any, reason: str, error_type: str) -> None:
    log.warning("dead-lettering %s[%s]@%s: %s", msg.topic, msg.partition, msg.offset, reason)
    MESSAGES.labels(msg.topic, "invalid").inc()
    dead = invalid_message(
        settings.topics, topic=msg.topic, partition=msg.partition, offset=msg.offset,
        key=msg.key, value=msg.value, reason=reason, error_type=error_type,
    )
    attempt = 0
    while True:  # the dead letter must land before the offset moves on
        try:
            await publisher.send([dead])
            return
        except BrokerUnavailable:
            attempt += 1
            await asyncio.sleep(min(0.5 * attempt, 5.0))
