"""The development broker as a cluster and with a secured listener (shared/devcluster.py,
shared/devsecurity.py): no message is lost when a partition leader is SIGKILLed under an
idempotent acks=all producer, and SASL_SSL/SCRAM-SHA-512 lets the right password in only."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError

from shared.devbroker import free_port
from shared.devcluster import Cluster
from shared.devsecurity import make_test_security

pytestmark = pytest.mark.e2e
T = TypeVar("T")


async def _poll(check: Callable[[], T], timeout: float, what: str) -> T:
    """Call the blocking `check` (in a thread) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while not (result := await asyncio.to_thread(check)):
        assert time.monotonic() < deadline, f"{what} not within {timeout:.0f}s"
        await asyncio.sleep(0.2)
    return result


async def _read_all(bootstrap: str, topic: str, partitions: int, **kwargs: object) -> list[bytes]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, **kwargs)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        values: list[bytes] = []
        while [tp for tp in tps if await consumer.position(tp) < end[tp]]:
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                values += [r.value for r in records]
        return values
    finally:
        await consumer.stop()


@pytest.mark.timeout(240)  # a three-node start (up to 90 s) and stop on two loaded cores
async def test_no_loss_when_partition_leader_is_killed(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path / "kafka", 3, [(free_port(), free_port()) for _ in range(3)], fast_failover=True)
    topic, partitions = "orders", 3
    try:
        await asyncio.to_thread(cluster.start, 90)
        assert [n.node_id for n in cluster.nodes] == [1, 2, 3] and all(n.pid for n in cluster.nodes)
        admin = AIOKafkaAdminClient(bootstrap_servers=cluster.bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, partitions, 3, topic_configs={"min.insync.replicas": "2"})])
        finally:
            await admin.close()
        await _poll(lambda: all(len(p["isr"]) == 3 for p in cluster.describe_topics([topic])[0]["partitions"]), 30, "full ISR")

        producer = AIOKafkaProducer(bootstrap_servers=cluster.bootstrap, acks="all", enable_idempotence=True)
        await producer.start()
        acks: list[asyncio.Future[object]] = []
        stop = asyncio.Event()

        async def produce() -> None:
            while not stop.is_set():
                n = len(acks)
                acks.append(await producer.send(topic, str(n).encode(), partition=n % partitions))
                await asyncio.sleep(0.005)

        producing = asyncio.create_task(produce())
        try:
            await asyncio.sleep(1)
            victim = (await asyncio.to_thread(cluster.partition_leaders, topic))[0]
            killed_at = time.monotonic()
            cluster.kill(victim)
            assert cluster.node(victim).pid is None
            await _poll(lambda: cluster.partition_leaders(topic)[0] not in (victim, -1), 30, "a new leader for partition 0")
            failover = time.monotonic() - killed_at
            new_leader = (await asyncio.to_thread(cluster.partition_leaders, topic))[0]
            # The active controller is a live node: a different one if the victim was the controller.
            await _poll(lambda: cluster.active_controller() not in (None, victim), 30, "a live active controller")
            controller = await asyncio.to_thread(cluster.active_controller)
            print(f"\npartition 0: leader {victim} killed, node {new_leader} leads after {failover:.1f}s; active controller {controller}")
            assert failover < 15

            await asyncio.to_thread(cluster.restart, victim)  # returns once it is back in every ISR
            assert cluster.node(victim).pid is not None
            await asyncio.sleep(0.5)
        finally:
            stop.set()
            await producing
        results = await asyncio.wait_for(asyncio.gather(*acks), 60)
        await producer.stop()
        assert len(results) == len(acks) > 100
        assert sum((await asyncio.to_thread(cluster.leader_counts, topic)).values()) == partitions

        values = await _read_all(cluster.bootstrap, topic, partitions)
        assert len(values) == len(acks)  # exactly once: no loss, no duplicate from the retries
        assert sorted(int(v) for v in values) == list(range(len(acks)))
    finally:
        await asyncio.to_thread(cluster.stop)
    assert all(n.pid is None for n in cluster.nodes)


@pytest.mark.timeout(90)
async def test_sasl_ssl_scram_listener(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    security = await asyncio.to_thread(make_test_security, tmp_path / "tls")
    cluster = Cluster(tmp_path / "kafka", 1, [(free_port(), free_port())], security=security)
    try:
        await asyncio.to_thread(cluster.start, 60)
        producer = AIOKafkaProducer(bootstrap_servers=cluster.bootstrap, acks="all", **security.client_kwargs())
        await producer.start()
        try:
            await asyncio.wait_for(producer.send_and_wait("secured", b"hello", partition=0), 30)
        finally:
            await producer.stop()
        assert await asyncio.wait_for(_read_all(cluster.bootstrap, "secured", 1, **security.client_kwargs()), 30) == [b"hello"]

        for name, kwargs in [("wrong password", security.client_kwargs(password="not-the-password")),
                             ("plaintext", {"security_protocol": "PLAINTEXT"})]:
            intruder = AIOKafkaProducer(bootstrap_servers=cluster.bootstrap, request_timeout_ms=5000, **kwargs)
            caplog.clear()
            started = time.monotonic()
            with caplog.at_level(logging.ERROR, logger="aiokafka"), pytest.raises(KafkaConnectionError, match="Unable to bootstrap"):
                await asyncio.wait_for(intruder.start(), 15)
            await intruder.stop()
            assert time.monotonic() - started < 10, name
            if name == "wrong password":  # aiokafka logs the broker's reason, then gives up on the node
                assert any("SaslAuthenticationFailed" in r.getMessage() and "invalid credentials" in r.getMessage()
                           for r in caplog.records), [r.getMessage() for r in caplog.records]
    finally:
        await asyncio.to_thread(cluster.stop)
