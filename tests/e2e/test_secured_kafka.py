"""The services on a SASL_SSL listener (SCRAM-SHA-512, a CA made by the test), and the one
clear error a service gives at start when the cluster refuses its settings."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.devbroker import free_port
from shared.devcluster import Cluster
from shared.devsecurity import Security, make_test_security
from tests.harness import RunningStack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, Security, Path]]:
    root = tmp_path_factory.mktemp("secured")
    security = make_test_security(root / "tls")
    cluster = Cluster(root / "kafka", 1, [(free_port(), free_port())], security=security)
    cluster.start(120)
    try:
        yield cluster, security, root
    finally:
        cluster.stop()


async def test_a_pack_completes_through_a_sasl_ssl_listener(secured: tuple[Cluster, Security, Path], tmp_path: Path) -> None:
    cluster, security, _ = secured
    with RunningStack.started(cluster.bootstrap, tmp_path, **security.service_env()) as s:
        user = await s.create_user(credits=10)
        accepted = await s.post_pack(user, {"product": {"name": "Tea tin"}, "images": ["main", "detail"]})
        assert accepted.status_code == 202, accepted.text
        events = await s.events(accepted.json()["pack_id"], user)
        assert events[-1].event == "pack" and events[-1].json()["status"] == "COMPLETED"
        assert await s.balance(user) == 8


def serve(service: str, cluster: Cluster, env: dict[str, str], var: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", "serve", service],
        env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": cluster.bootstrap, "VAR_DIR": str(var),
             "TOPIC_PREFIX": f"t{uuid.uuid4().hex[:8]}.", "PACKLINE_SECRET": "s", "CREDITS_PORT": str(free_port()), **env},
        capture_output=True, text=True, timeout=60,
    )


@pytest.mark.parametrize("service", ["credits", "api"])
def test_a_wrong_password_stops_the_service_at_start_with_one_line(
    secured: tuple[Cluster, Security, Path], tmp_path: Path, service: str,
) -> None:
    cluster, security, _ = secured
    wrong = "not-the-password-" + uuid.uuid4().hex
    result = serve(service, cluster, {**security.service_env(), "KAFKA_SASL_PASSWORD": wrong}, tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "authentication failed" in result.stderr.strip().splitlines()[-1]
    assert wrong not in result.stdout + result.stderr  # the secret is never printed


def test_an_untrusted_certificate_stops_the_service_at_start_with_one_line(
    secured: tuple[Cluster, Security, Path], tmp_path: Path,
) -> None:
    cluster, security, _ = secured
    stranger = make_test_security(tmp_path / "other-ca")  # a CA that never signed the broker's certificate
    result = serve("credits", cluster, {**security.service_env(), "KAFKA_SSL_CAFILE": str(stranger.ca_file)}, tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "TLS failed" in result.stderr.strip().splitlines()[-1]
