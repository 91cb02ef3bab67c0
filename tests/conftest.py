"""Fixtures: one real Kafka broker per test session, and whole stacks of service
processes isolated by a uuid topic prefix, their own var/ dir and free ports."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
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


POSTGRES_URL = os.environ.get("PACKLINE_TEST_POSTGRES_URL", "postgresql+psycopg://packline:packline@127.0.0.1:5432/packline")


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """A reachable PostgreSQL (`.ci/run` starts one). Outside CI, skipped with the reason."""
    from sqlalchemy import create_engine, text

    engine = create_engine(POSTGRES_URL)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_URL} ({exc.__class__.__name__}); run deploy/postgres-setup.sh")
    finally:
        engine.dispose()
    return POSTGRES_URL


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A fresh database per test, dropped afterwards."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import DBAPIError

    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres_server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield postgres_server.rsplit("/", 1)[0] + "/" + name
    finally:
        for attempt in range(10):
            try:
                with admin.connect() as conn:
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                break
            except DBAPIError:
                # An autovacuum worker on the new database is a session FORCE may not end
                # without superuser rights; it finishes within moments.
                if attempt == 9:
                    raise
                time.sleep(0.5)
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'credits.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    """Four service processes with a fast local backend, shared by a test module."""
    with RunningStack.started(kafka_bootstrap, tmp_path_factory.mktemp("stack")) as running:
        yield running
