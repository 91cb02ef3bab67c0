"""Hostile input: schemathesis generates requests (valid and invalid) from the api's and
the notifier's own OpenAPI specs and runs them against the real services, once with a key
of each scope (and the account key, which holds every user scope). No 5xx, no answer that
contradicts the spec, invalid data always refused."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.auth import make_named_key, new_key_id
from tests.harness import RunningStack

pytestmark = pytest.mark.e2e
ST = str(Path(sys.executable).with_name("schemathesis"))
CONFIG = Path(__file__).with_name("schemathesis.toml")
CHECKS = "not_a_server_error,response_schema_conformance,negative_data_rejection,content_type_conformance"
KEYS = ("account", "packs:write", "packs:read", "keys", "ops")


def key_of(stack: RunningStack, kind: str) -> str:
    """The fuzzer's account key, or a named key holding only the scope `kind`."""
    if kind == "account":
        return stack.key("fuzzer")
    return make_named_key(stack.secret, "fuzzer", new_key_id(), [kind])


async def fuzz(url: str, key: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [ST, "--config-file", str(CONFIG), "run", f"{url}/openapi.json", "--checks", CHECKS, "--max-examples", "30", "--seed", "1",
         "-H", f"Authorization: Bearer {key}", "--request-timeout", "20", *extra],
        capture_output=True, text=True, timeout=600,
    )


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    # Generated pack ids name no pack: refuse them at once instead of waiting for one to appear.
    with RunningStack.started(kafka_bootstrap, tmp_path_factory.mktemp("fuzz"), NOTIFIER_PACK_WAIT_S="0") as running:
        yield running


@pytest.mark.parametrize("kind", KEYS)
async def test_api_survives_generated_requests(stack: RunningStack, kind: str) -> None:
    result = await fuzz(stack.api, key_of(stack, kind))
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


@pytest.mark.parametrize("kind", KEYS)
async def test_notifier_survives_generated_requests(stack: RunningStack, kind: str) -> None:
    # Streams of existing packs never end by design; generated ids name no pack and are refused.
    result = await fuzz(stack.notifier, key_of(stack, kind), "--exclude-path-regex", r".*/events$")
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
