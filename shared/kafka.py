"""Kafka plumbing every service uses: the client settings, an idempotent acks=all
publisher, dead-letter headers. Reading is in `shared.consumer`, topic creation in
`shared.admin`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.helpers import create_ssl_context
from aiokafka.partitioner import DefaultPartitioner

from shared import tracing
from shared.errors import BrokerUnavailable
from shared.events import Event
from shared.topics import Topics

log = logging.getLogger("packline.kafka")
Headers = list[tuple[str, bytes]]


def header(headers: Sequence[tuple[str, bytes]] | None, name: str) -> str | None:
    for key, value in headers or ():
        if key == name:
            return value.decode(errors="replace")
    return None


def key_bytes(key: object) -> bytes:
    return str(key).encode()


SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


@dataclass(frozen=True)
class KafkaConfig:
    """How a deployment's clients reach its cluster: every producer, consumer and admin
    client is built here, so security settings apply to all of them alike."""

    bootstrap: str
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)  # never in logs
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None

    @cached_property
    def _ssl_context(self) -> ssl.SSLContext | None:
        if self.security_protocol not in ("SSL", "SASL_SSL"):
            return None
        return create_ssl_context(cafile=self.ssl_cafile, certfile=self.ssl_certfile, keyfile=self.ssl_keyfile)

    def options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"bootstrap_servers": self.bootstrap, "security_protocol": self.security_protocol}
        if self._ssl_context is not None:
            options["ssl_context"] = self._ssl_context
        if self.security_protocol.startswith("SASL"):
            options |= {
                "sasl_mechanism": self.sasl_mechanism or "PLAIN",
                "sasl_plain_username": self.sasl_username, "sasl_plain_password": self.sasl_password,
            }
        return options

    def producer(self, **options: Any) -> AIOKafkaProducer:
        return AIOKafkaProducer(**self.options(), **options)

    def consumer(self, **options: Any) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(**self.options(), **options)

    def admin(self, **options: Any) -> AIOKafkaAdminClient:
        return AIOKafkaAdminClient(**self.options(), **options)


@dataclass
class Outgoing:
    topic: str
    value: bytes
    key: bytes
    headers: Headers = field(default_factory=list)
    partition: int | None = None  # None: the key's, chosen by the producer (Publisher.partition_for)

    @classmethod
    def of(cls, topic: str, event: Event, key: object, headers: Headers | None = None) -> Outgoing:
        return cls(topic, event.encode(), key_bytes(key), headers or [])


class Publisher:
    """Every effect a service has on the world goes through here, and is acknowledged
    by all in-sync replicas before the caller moves on (so before any offset commit)."""

    def __init__(self, kafka: KafkaConfig, client_id: str, timeout_s: float = 10.0) -> None:
        self.kafka, self.client_id, self.timeout_s = kafka, client_id, timeout_s
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()
        self._unflushed: list[asyncio.Future[Any]] = []

    async def start(self) -> None:
        async with self._lock:
            if self._producer is None:
                await self._start()

    async def _start(self) -> None:
        # aiokafka clients bind the running loop, so they are built here, not in __init__.
        producer = self.kafka.producer(
            client_id=self.client_id,
            acks="all",
            enable_idempotence=True,
            linger_ms=0,  # latency first: whatever piles up while a request is in flight is batched anyway
            request_timeout_ms=int(self.timeout_s * 1000),
        )
        try:
            await producer.start()
        except KafkaError as exc:
            # Kept, a producer that never connected would be used: its metadata waits have no end.
            with contextlib.suppress(Exception):
                await producer.stop()
            raise BrokerUnavailable(f"Kafka could not be reached: {exc!r}") from exc
        self._producer = producer

    async def _started(self) -> AIOKafkaProducer:
        """The producer, started first if need be: a handler may send before its service has
        started the publisher, and a failed one is replaced on the next call."""
        if self._producer is None:
            await self.start()
        assert self._producer is not None
        return self._producer

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def send(self, messages: Iterable[Outgoing]) -> None:
        """Send in order (the idempotent producer keeps per-partition order), wait for all acks."""
        await self.wait(await self.enqueue(messages, keep=False))

    async def enqueue(self, messages: Iterable[Outgoing], keep: bool = True) -> list[asyncio.Future[Any]]:
        """Hand messages to the producer without waiting for their acks. With `keep`, the
        next `flush()` waits for them: a consumer pipelines a batch's effects this way and
        flushes before it commits the batch's offsets."""
        producer = await self._started()

        async def put_all() -> list[asyncio.Future[Any]]:
            futures = []
            for m in messages:
                tracing.inject(m.topic, m.value, m.headers)  # the one place trace context enters Kafka
                futures.append(await producer.send(m.topic, m.value, key=m.key, headers=m.headers, partition=m.partition))
            return futures

        try:
            # asyncio.timeout, not wait_for: no task of its own for every send (3.11's wait_for makes one)
            async with asyncio.timeout(self.timeout_s):  # waits when Kafka is away
                futures = await put_all()
        except (KafkaError, TimeoutError) as exc:
            await self._reset(producer)
            raise BrokerUnavailable(f"Kafka refused the message: {exc!r}") from exc
        if keep:
            self._unflushed.extend(futures)
        return futures

    async def partition_for(self, topic: str, key: bytes) -> int:
        """The partition of `topic` that `key` goes to: the producer's own choice (Kafka's
        murmur2 of the key over all partitions), known before anything is sent."""
        producer = await self._started()
        try:
            async with asyncio.timeout(self.timeout_s):
                partitions = sorted(await producer.partitions_for(topic))
        except (KafkaError, TimeoutError) as exc:
            await self._reset(producer)
            raise BrokerUnavailable(f"no partitions known for {topic}: {exc!r}") from exc
        return int(DefaultPartitioner()(key, partitions, partitions))

    async def flush(self) -> None:
        """Wait for the acks of everything enqueued so far."""
        futures, self._unflushed = self._unflushed, []
        await self.wait(futures)

    async def wait(self, futures: list[asyncio.Future[Any]]) -> None:
        """Wait for the acks of messages `enqueue` returned."""
        producer = self._producer
        try:
            async with asyncio.timeout(self.timeout_s):
                await asyncio.gather(*futures)
        except (KafkaError, TimeoutError) as exc:
            if producer is not None:
                await self._reset(producer)
            raise BrokerUnavailable(f"Kafka did not acknowledge: {exc!r}") from exc

    async def _reset(self, producer: AIOKafkaProducer) -> None:
        """Start over with a new producer (a new producer id) after a failure: after a broker
        restart aiokafka's idempotent producer can keep a batch stuck behind a partition's
        old sequence numbers, failing every later send to that partition. Callers retry, and
        every message is keyed, so a late delivery from the old producer is harmless."""
        async with self._lock:
            if self._producer is producer:
                self._producer = None
        try:
            await asyncio.wait_for(producer.stop(), 5)
        except Exception:
            log.warning("could not stop the failed producer cleanly", exc_info=True)


def failure_headers(
    *, attempts: int, error: str, error_type: str, original_topic: str, first_failed_at_ms: int | None,
    extra: dict[str, Any] | None = None,
) -> Headers:
    """The contract's headers on every retried or dead-lettered message."""
    values: dict[str, Any] = {
        "x-attempts": attempts,
        "x-error": error[:1000],
        "x-error-type": error_type,
        "x-original-topic": original_topic,
        "x-first-failed-at": first_failed_at_ms or int(time.time() * 1000),
        **(extra or {}),
    }
    return [(k, str(v).encode()) for k, v in values.items() if v is not None]


def invalid_message(
    topics: Topics, *, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None,
    reason: str, error_type: str = "InvalidMessage", headers: Headers | None = None, bad_header: str | None = None,
) -> Outgoing:
    """A message for invalid.dlq: the original key and value, where it came from and why.
    Its own headers are kept in `x-original-headers` (a JSON list of [name, value]), so a
    replay can restore them; `bad_header` names the one that was malformed."""
    extra: dict[str, Any] = {"x-original-partition": partition, "x-original-offset": offset, "x-bad-header": bad_header}
    if headers:
        extra["x-original-headers"] = json.dumps([[k, v.decode(errors="replace")] for k, v in headers])
    dead = failure_headers(
        attempts=1, error=reason, error_type=error_type, original_topic=topic, first_failed_at_ms=None, extra=extra,
    )
    return Outgoing(topics.invalid_dlq, value or b"", key or b"", tracing.keep(dead, headers))


def original_headers(headers: Sequence[tuple[str, bytes]] | None) -> Headers:
    """The headers a dead-lettered message had (`invalid_message`), or none."""
    raw = header(headers, "x-original-headers")
    if not raw:
        return []
    try:
        return [(str(k), str(v).encode()) for k, v in json.loads(raw)]
    except (ValueError, TypeError):
        return []
