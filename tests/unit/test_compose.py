"""docker-compose.yml is checked against the compose specification's JSON Schema (no
container engine needed), and describes the replicated cluster the docs promise."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"


def check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True, text=True, timeout=60,
    )


def test_compose_file_follows_the_compose_specification() -> None:
    result = check(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_rejects_a_broken_compose_file(tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE.read_text().replace("    image: postgres:16", "    imagee: postgres:16"))
    result = check(broken)
    assert result.returncode != 0 and "imagee" in result.stdout


def test_compose_runs_three_brokers_with_replicated_topics_and_their_own_volumes() -> None:
    spec = yaml.safe_load(COMPOSE.read_text())
    brokers = {name: svc for name, svc in spec["services"].items() if svc.get("image", "").startswith("apache/kafka:")}
    assert len(brokers) == 3
    assert {str(svc["environment"]["KAFKA_NODE_ID"]) for svc in brokers.values()} == {"1", "2", "3"}
    for name, svc in brokers.items():
        env = svc["environment"]
        assert env["KAFKA_DEFAULT_REPLICATION_FACTOR"] == 3 and env["KAFKA_MIN_INSYNC_REPLICAS"] == 2
        assert env["KAFKA_UNCLEAN_LEADER_ELECTION_ENABLE"] == "false"
        assert [f"{name}:/var/lib/kafka/data"] == svc["volumes"] and name in spec["volumes"]
    api_env = spec["services"]["api"]["environment"]
    assert api_env["KAFKA_REPLICATION_FACTOR"] == "3" and api_env["KAFKA_BOOTSTRAP_SERVERS"].count(",") == 2
