"""Fixtures: one real Kafka broker per test session, and whole stacks of service
processes isolated by a uuid topic prefix, their own var/ dir and free ports."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.devbroker import Broker, free_port
from tests.harness import RunningStack


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """KAFKA_BOOTSTRAP_SERVERS if set; testcontainers if PACKLINE_TEST_DOCKER=1; otherwise
    the project's own jar-launched broker on free ports."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield os.environ["KAFKA_BOOTSTRAP_SERVERS"]
        return
    if os.environ.get("PACKLINE_TEST_DOCKER") == "1":
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer("apache/kafka:4.1.1").with_kraft() as container:
            yield container.get_bootstrap_server()
        return
    data_dir = Path(tempfile.mkdtemp(prefix="packline-kafka-"))
    broker = Broker(data_dir, free_port(), free_port())
    broker.start(timeout=120)
    try:
        yield broker.bootstrap
    finally:
        broker.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}."


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    """Four service processes with a fast local backend, shared by a test module."""
    with RunningStack.started(kafka_bootstrap, tmp_path_factory.mktemp("stack")) as running:
        yield running
