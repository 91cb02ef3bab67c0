"""Redrive as an operator does it, on a real stack: replays signed by an operator key,
parking after DLQ_MAX_REPLAYS failed replays, invalid.dlq entries replayed to their topic
after a fix."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.auth import make_api_key, make_named_key, new_key_id
from shared.events import PackRequested, Product, decode
from shared.kafka import Outgoing, header
from tests.harness import OPERATOR, RunningStack

pytestmark = pytest.mark.e2e
MAX_REPLAYS = 2


@pytest.fixture(scope="module")
def s(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    """`main` images fail for good, every other image fails once and is retried."""
    with RunningStack.started(kafka_bootstrap, tmp_path_factory.mktemp("redrive"), LOCAL_IMAGE_PERMANENT_FAIL_KINDS="main",
                              LOCAL_IMAGE_FAIL_FIRST="1", DLQ_MAX_REPLAYS=str(MAX_REPLAYS), LOG_FORMAT="json") as running:
        yield running


async def cli(s: RunningStack, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "services.cli", *args],
                                   env={**os.environ, **s.env, **env}, capture_output=True, text=True, timeout=120)


async def listed(s: RunningStack, pack_id: str) -> list[dict[str, Any]]:
    out = await cli(s, "dlq", "list", "--pack", pack_id, "--json")
    assert out.returncode == 0, out.stderr
    return sorted(json.loads(out.stdout), key=lambda e: int(e["id"].rsplit(":", 1)[1]))


async def dead_letters(s: RunningStack, pack_id: str, count: int, timeout: float = 90) -> None:
    """Until images.dlq holds `count` entries of the pack."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        have = [r for r in await s.records(s.topics.images_dlq) if str(decode(r.value).pack_id) == pack_id]
        if len(have) >= count:
            return
        assert asyncio.get_running_loop().time() < deadline, f"{len(have)} dead letters of {pack_id}, want {count}"
        await asyncio.sleep(0.3)


async def test_an_image_that_fails_after_max_replays_is_parked(s: RunningStack) -> None:
    user = await s.create_user(credits=10)
    pack_id = (await s.post_pack(user, {"product": {"name": "Lamp"}, "images": ["main", "detail"]})).json()["pack_id"]
    assert (await s.events(pack_id, user))[-1].json()["status"] == "PARTIAL"
    await dead_letters(s, pack_id, 1)
    for n in range(1, MAX_REPLAYS + 1):
        out = await cli(s, "dlq", "replay", "--pack", pack_id)
        assert out.returncode == 0 and f"1 entries replayed by {OPERATOR}" in out.stdout, out.stdout + out.stderr
        await dead_letters(s, pack_id, n + 1)  # replayed, failed again, dead-lettered again

    entries = await listed(s, pack_id)
    assert [(e["replays"], e["lineage_replays"], e["parked"]) for e in entries] == [
        (1, 0, False), (1, 1, False), (0, 2, True)]
    assert all(e["replayed_by"] == [OPERATOR] for e in entries[:-1])
    parked = entries[-1]["id"]
    table = (await cli(s, "dlq", "list", "--pack", pack_id, COLUMNS="400")).stdout
    assert "parked: replayed 2 times and failed again" in table and "1x by ops-test" in table

    # Nothing more is replayed unless on purpose.
    skipped = await cli(s, "dlq", "replay", "--pack", pack_id)
    assert skipped.returncode == 0 and f"skipping parked {parked}" in skipped.stdout and "0 entries replayed" in skipped.stdout
    refused = await cli(s, "dlq", "replay", parked)
    assert refused.returncode == 1 and "parked" in refused.stderr
    forced = await cli(s, "dlq", "replay", parked, "--force")
    assert forced.returncode == 0, forced.stderr
    await dead_letters(s, pack_id, MAX_REPLAYS + 2)
    entries = await listed(s, pack_id)
    assert entries[-2]["replays"] == 1 and entries[-1]["parked"]

    history = json.loads((await cli(s, "dlq", "history", "--json")).stdout)
    mine = [h for h in history if pack_id in h["pack_ids"]]
    assert [h["forced"] for h in mine] == [False] * MAX_REPLAYS + [True]
    assert all(h["operator"] == OPERATOR and h["key_id"] for h in mine)


async def test_the_operator_is_the_holder_of_an_ops_key(s: RunningStack) -> None:
    """No key, a key without the ops scope, a revoked ops key: refused, nothing recorded.
    `--operator` is only a note beside the key's identity."""
    before = len(await s.records(s.topics.ops_audit))
    created = await cli(s, "accounts", "keys", "create", "ops-gone", "--name", "x", "--scope", "ops")
    assert created.returncode == 0, created.stderr
    gone_id = created.stdout.split()[1]
    assert (await cli(s, "accounts", "keys", "revoke", gone_id)).returncode == 0
    gone_key = created.stdout.strip().splitlines()[-1]
    after_setup = len(await s.records(s.topics.ops_audit))
    cases = {
        "": "an operator is needed",
        make_api_key(s.secret, "someone"): "has no ops scope",
        make_named_key("another secret", OPERATOR, new_key_id(), ["ops"]): "operator key refused",
        gone_key: "is revoked",
    }
    for key, why in cases.items():
        out = await cli(s, "dlq", "replay", "--all", "--dry-run", PACKLINE_OPERATOR_KEY=key)
        assert out.returncode == 2 and why in out.stderr, (why, out.stderr)
    assert len(await s.records(s.topics.ops_audit)) == after_setup > before
    out = await cli(s, "dlq", "replay", "--all", "--dry-run", "--operator", "alice")
    assert out.returncode == 0 and "deprecated" in out.stderr, out.stderr
    last = json.loads((await cli(s, "dlq", "history", "--json")).stdout)[-1]
    assert (last["operator"], last["label"], last["dry_run"]) == (OPERATOR, "alice", True)


async def test_an_invalid_entry_is_replayed_to_its_topic_after_a_fix(s: RunningStack, tmp_path: Path) -> None:
    """A pack request that fails its schema is on invalid.dlq; the operator looks at it,
    fixes it and replays it to packs.requested: the pack is made and paid for."""
    user = await s.create_user(credits=10)
    request = PackRequested(pack_id=uuid.uuid4(), user_id=user, product=Product(name="Lamp"), images=["detail"])
    broken = json.loads(request.encode())
    broken["product"] = "a lamp"
    sent = await s.publish([Outgoing(s.topics.packs_requested, json.dumps(broken).encode(), user.encode())])

    async def entry() -> dict[str, Any] | None:
        out = await cli(s, "dlq", "list", "--json")
        return next((e for e in json.loads(out.stdout) if e["original_topic"] == s.topics.packs_requested
                     and e["original_offset"] == sent[0].offset and e["original_partition"] == sent[0].partition), None)

    deadline = asyncio.get_running_loop().time() + 60
    while (found := await entry()) is None:
        assert asyncio.get_running_loop().time() < deadline, "the broken request never reached invalid.dlq"
        await asyncio.sleep(0.5)
    assert found["replayable"] and "product" in found["error"]
    shown = json.loads((await cli(s, "dlq", "show", found["id"])).stdout)
    assert shown["message"] == broken and shown["key"] == user

    fixed = tmp_path / "fixed.json"
    fixed.write_text(json.dumps({**shown["message"], "product": {"name": "Lamp"}}))
    out = await cli(s, "dlq", "replay", found["id"], "--value-file", str(fixed))
    assert out.returncode == 0 and f"to {s.topics.packs_requested}" in out.stdout, out.stdout + out.stderr
    final = (await s.events(str(request.pack_id), user))[-1].json()
    assert (final["status"], final["charged"]) == ("COMPLETED", 1), final
    assert await s.balance(user) == 9
    replayed = [r for r in await s.records(s.topics.packs_requested) if header(r.headers, "x-replayed-from") == found["id"]]
    assert len(replayed) == 1 and header(replayed[0].headers, "x-replayed-by") == OPERATOR
    after = next(e for e in await listed_all(s) if e["id"] == found["id"])
    assert after["replays"] == 1 and not after["parked"]


async def listed_all(s: RunningStack) -> list[dict[str, Any]]:
    return list(json.loads((await cli(s, "dlq", "list", "--json")).stdout))


STEPS = {"accepted", "debited", "job_started", "finished", "failed", "retried", "dead_lettered", "refunded", "settled",
         "replayed"}
IMAGE_STEPS = STEPS - {"accepted", "debited"}


def log_lines(s: RunningStack) -> dict[str, list[dict[str, Any]]]:
    """Each service's log file (LOG_FORMAT=json), one parsed object per line."""
    return {path.stem: [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            for path in sorted(s.stack.log_dir.glob("*.log"))}


async def test_every_lifecycle_step_is_one_json_line(s: RunningStack) -> None:
    """One pack: `detail` fails once and is retried, `main` fails for good, is refunded, and
    is replayed (and fails again). Every step is a JSON line naming pack, image, user and
    event, in the log of the service that took it."""
    user = await s.create_user(credits=10)
    pack_id = (await s.post_pack(user, {"product": {"name": "Lamp"}, "images": ["main", "detail"]})).json()["pack_id"]
    assert (await s.events(pack_id, user))[-1].json()["status"] == "PARTIAL"
    await dead_letters(s, pack_id, 1)
    assert (await cli(s, "dlq", "replay", "--pack", pack_id)).returncode == 0
    await dead_letters(s, pack_id, 2)

    deadline = asyncio.get_running_loop().time() + 30
    while True:  # the last steps of the replayed run may still be on their way to the files
        logs = log_lines(s)  # every line parses as JSON, whichever logger wrote it
        steps = [(service, line) for service, lines in logs.items() for line in lines
                 if line.get("logger") == "packline.lifecycle" and line.get("pack_id") == pack_id]
        if {line["step"] for _, line in steps} >= STEPS and sum(line["step"] == "settled" for _, line in steps) >= 2:
            break
        assert asyncio.get_running_loop().time() < deadline, sorted({line["step"] for _, line in steps})
        await asyncio.sleep(0.5)
    where = {line["step"]: service for service, line in steps}
    assert where == {"accepted": "api", "debited": "credits", "refunded": "credits", "settled": "credits",
                     "replayed": "credits", **{k: "generation" for k in ("job_started", "finished", "failed", "retried",
                                                                          "dead_lettered")}}
    for _, line in steps:
        assert line["user_id"] == user and line["event_id"] and "trace_id" in line, line
        assert bool(line["image_id"]) == (line["step"] in IMAGE_STEPS), line
    by_image = {(line["step"], line["image_id"]) for _, line in steps}
    assert {("retried", "detail"), ("finished", "detail"), ("dead_lettered", "main"), ("refunded", "main"),
            ("replayed", "main")} <= by_image
    assert ("finished", "main") not in by_image and ("dead_lettered", "detail") not in by_image
    access = [line for line in logs["api"] if line.get("logger") == "uvicorn.access" and line.get("method") == "POST"]
    assert any(line["path"] == "/v1/packs" and line["status"] == 202 for line in access)
