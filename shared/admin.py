"""Cluster administration every service needs at start: reach the cluster (a wrong
password or an untrusted certificate is one clear error, not a retry loop), and create
the registry's topics with the deployment's replication."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from dataclasses import dataclass

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.conn import create_conn
from aiokafka.errors import (
    AuthenticationFailedError,
    AuthenticationMethodNotSupported,
    KafkaError,
    SaslAuthenticationFailed,
    TopicAlreadyExistsError,
    UnsupportedSaslMechanismError,
)

from shared.errors import BrokerUnavailable
from shared.kafka import KafkaConfig
from shared.settings import CommonSettings
from shared.topics import REGISTRY

log = logging.getLogger("packline.admin")
AUTHENTICATION = (AuthenticationFailedError, AuthenticationMethodNotSupported, SaslAuthenticationFailed,
                  UnsupportedSaslMechanismError)


class KafkaSetupError(Exception):
    """The cluster refuses this deployment's client settings: retrying will not help."""


@dataclass(frozen=True)
class TopicState:
    name: str
    partitions: int
    replicas: int
    created: bool


async def connect_admin(kafka: KafkaConfig, timeout_s: float = 30.0) -> AIOKafkaAdminClient:
    """A started admin client, or KafkaSetupError naming what is wrong with the settings.
    A cluster that is merely not up yet is waited for (`timeout_s`), then BrokerUnavailable."""
    deadline = time.monotonic() + timeout_s
    while True:
        admin = kafka.admin(client_id="packline-admin", request_timeout_ms=10_000)
        try:
            await admin.start()
            await admin.list_topics()
            return admin
        except (KafkaError, OSError) as exc:
            await admin.close()
            # aiokafka only logs why it could not bootstrap: ask one broker directly to learn it.
            refused = _refusal(exc) or await _refusal_of_first_broker(kafka)
            if refused:
                raise KafkaSetupError(f"Kafka at {kafka.bootstrap} ({kafka.security_protocol}) refused the connection: {refused}") from exc
            if time.monotonic() > deadline:
                raise BrokerUnavailable(f"Kafka at {kafka.bootstrap} did not answer: {exc!r}") from exc
            await asyncio.sleep(1.0)


def _refusal(exc: BaseException) -> str | None:
    """What in `exc` (or its cause) says the settings are wrong rather than the cluster away."""
    for err in (exc, exc.__cause__, exc.__context__):
        if isinstance(err, AUTHENTICATION):
            return f"authentication failed ({err.__class__.__name__}): check KAFKA_SASL_* settings"
        if isinstance(err, ssl.SSLError):
            return f"TLS failed ({err.reason or err}): check KAFKA_SSL_* settings"
    return None


async def _refusal_of_first_broker(kafka: KafkaConfig) -> str | None:
    host, _, port = kafka.bootstrap.split(",")[0].strip().rpartition(":")
    options = {k: v for k, v in kafka.options().items() if k != "bootstrap_servers"}
    try:
        conn = await create_conn(host, int(port), client_id="packline-admin", request_timeout_ms=5_000, **options)
    except Exception as exc:
        return _refusal(exc)
    conn.close()
    return None


async def ensure_topics(settings: CommonSettings) -> list[TopicState]:
    """Create every topic of the registry that does not exist yet (idempotent), with
    KAFKA_REPLICATION_FACTOR replicas (default: min(3, brokers)) and
    KAFKA_MIN_INSYNC_REPLICAS (default: replicas - 1, at least 1); unclean leader
    election stays off. Returns every topic's state, new or not."""
    admin = await connect_admin(settings.kafka)
    try:
        brokers = len((await admin.describe_cluster())["brokers"])
        replicas = settings.kafka_replication_factor or min(3, brokers)
        min_isr = settings.kafka_min_insync_replicas or max(1, replicas - 1)
        topics = settings.topics
        existing = set(await admin.list_topics())
        durability = {"min.insync.replicas": str(min_isr), "unclean.leader.election.enable": "false"}
        new = [
            NewTopic(topics.name(spec), num_partitions=spec.partitions or settings.topic_partitions,
                     replication_factor=replicas, topic_configs={**durability, **spec.config})
            for spec in REGISTRY if topics.name(spec) not in existing
        ]
        if new:
            try:
                await admin.create_topics(new)
            except TopicAlreadyExistsError:
                pass
            log.info("created %d topics (replicas %d, min ISR %d)", len(new), replicas, min_isr)
        names = [topics.name(spec) for spec in REGISTRY]
        states = []
        for described in await admin.describe_topics(names):
            parts = described.get("partitions") or []
            fewest = min((len(p["replicas"]) for p in parts), default=0)
            name = described["topic"]
            states.append(TopicState(name, len(parts), fewest, any(t.name == name for t in new)))
            if parts and fewest < replicas:
                log.warning("topic %s has %d replicas, fewer than the %d asked for", name, fewest, replicas)
        return states
    finally:
        await admin.close()


async def partitions_of(kafka: KafkaConfig, topic: str, timeout_s: float = 15.0) -> list[TopicPartition]:
    """The partitions of `topic`, waiting for it to exist (consumers without a group
    assign them by hand)."""
    admin = kafka.admin(client_id="packline-admin")
    await admin.start()
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            [described] = await admin.describe_topics([topic])
            if described["error_code"] == 0 and described["partitions"]:
                return sorted(TopicPartition(topic, p["partition"]) for p in described["partitions"])
            if time.monotonic() > deadline:
                raise BrokerUnavailable(f"topic {topic} does not exist")
            await asyncio.sleep(0.2)
    finally:
        await admin.close()
