"""Retries through retry topics, dead letters, exactly-once refunds, replay,
poison messages. Services run as separate processes on the real broker."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from aiokafka import ConsumerRecord

from shared.events import ImageFailed, ImageJob, decode
from shared.kafka import Outgoing, Publisher
from tests.harness import RunningStack

pytestmark = pytest.mark.e2e
SIX = 6


def images_of(events: list) -> dict[str, list[dict]]:  # type: ignore[type-arg]
    out: dict[str, list[dict]] = {}  # type: ignore[type-arg]
    for e in events:
        if e.event == "image":
            out.setdefault(e.json()["image_id"], []).append(e.json())
    return out


def cli(running: RunningStack, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **running.env}
    return subprocess.run([sys.executable, "-m", "services.cli", *args], env=env, capture_output=True, text=True, timeout=120)


async def test_transient_failures_are_retried_until_success(kafka_bootstrap: str, tmp_path: Path) -> None:
    with RunningStack.started(kafka_bootstrap, tmp_path, LOCAL_IMAGE_FAIL_FIRST="2") as s:
        user = await s.create_user(credits=10)
        pack_id = (await s.post_pack(user, {"product": {"name": "Lamp"}, "images": ["main", "detail"]})).json()["pack_id"]
        events = await s.events(pack_id, user)
        final = events[-1].json()
        assert final["status"] == "COMPLETED" and final["refunded"] == 0 and final["charged"] == 2
        for image_id, history in images_of(events).items():
            assert [h["status"] for h in history] == [
                "GENERATING", "RETRYING", "GENERATING", "RETRYING", "GENERATING", "COMPLETED"], image_id
            retrying = [h for h in history if h["status"] == "RETRYING"]
            assert [h["attempts"] for h in retrying] == [1, 2]
            assert all(h["next_attempt_at"] and "injected transient failure" in h["error"] for h in retrying)
            assert history[-1]["attempts"] == 3
        assert await s.balance(user) == 8
        retried = await s.records(s.topics.retry(1)) + await s.records(s.topics.retry(5))
        assert len(retried) == 4  # two images, two retries each
        headers = dict(retried[0].headers)
        assert {"x-attempts", "x-error", "x-error-type", "x-original-topic", "x-first-failed-at", "x-due-at"} <= headers.keys()
        assert headers["x-original-topic"] == s.topics.images_jobs.encode()
        # The provider was called three times per image, and each retry no sooner than it was due.
        calls = s.provider_calls(pack_id)
        for image_id in ("main", "detail"):
            mine = sorted((c for c in calls if c["image_id"] == image_id), key=lambda c: c["start"])
            assert [(c["attempt"], c["outcome"]) for c in mine] == [(1, "transient"), (2, "transient"), (3, "ok")], mine
        assert_called_no_sooner_than_due(retried, calls)


async def test_always_failing_images_are_dead_lettered_and_fully_refunded(kafka_bootstrap: str, tmp_path: Path) -> None:
    with RunningStack.started(kafka_bootstrap, tmp_path, LOCAL_IMAGE_FAILURE_RATE="1", RETRY_MAX_ATTEMPTS="3") as s:
        user = await s.create_user(credits=10)
        pack_id = (await s.post_pack(user)).json()["pack_id"]
        events = await s.events(pack_id, user)
        final = events[-1].json()
        assert final["status"] == "FAILED" and final["charged"] == 0 and final["refunded"] == SIX
        for img in final["images"]:
            assert img["status"] == "FAILED" and img["attempts"] == 3
            assert "gave up after 3 attempts" in img["error"]
        assert await s.balance(user) == 10
        dead = [r for r in await s.records(s.topics.images_dlq) if str(decode(r.value).pack_id) == pack_id]  # type: ignore[attr-defined]
        assert len(dead) == SIX
        assert all(dict(r.headers)["x-attempts"] == b"3" for r in dead)
        listed = json.loads(cli(s, "dlq", "list", "--pack", pack_id, "--json").stdout)
        assert len(listed) == SIX and {e["error_type"] for e in listed} == {"TransientImageError"}
        assert {"id", "pack_id", "image_id", "original_topic", "error_type", "error", "attempts", "first_failed_at"} <= listed[0].keys()


async def test_permanent_failures_end_partial_then_replay_completes(kafka_bootstrap: str, tmp_path: Path) -> None:
    bad = "main,lifestyle,infographic"
    with RunningStack.started(kafka_bootstrap, tmp_path, LOCAL_IMAGE_PERMANENT_FAIL_KINDS=bad) as s:
        user = await s.create_user(credits=10)
        pack_id = (await s.post_pack(user)).json()["pack_id"]
        events = await s.events(pack_id, user)
        final = events[-1].json()
        assert final["status"] == "PARTIAL" and final["charged"] == 3 and final["refunded"] == 3
        failed = {i["image_id"] for i in final["images"] if i["status"] == "FAILED"}
        assert failed == set(bad.split(","))
        assert all(i["attempts"] == 1 for i in final["images"] if i["status"] == "FAILED")  # permanent: no retry
        assert await s.balance(user) == 7

        calls = s.provider_calls(pack_id)
        assert sorted((c["image_id"], c["attempt"], c["outcome"]) for c in calls) == sorted(
            (i["image_id"], 1, "permanent" if i["image_id"] in failed else "ok") for i in final["images"])

        # (e) every failure event delivered again refunds nothing more. The balance query
        # travels on credits.commands, not images.results: ask only once credits has
        # committed past the copies, which it does after handling them.
        results = [decode(r.value) for r in await s.records(s.topics.images_results)]
        failures = [e for e in results if isinstance(e, ImageFailed) and str(e.pack_id) == pack_id]
        assert len(failures) == 3
        sent = await s.publish([Outgoing.of(s.topics.images_results, f, pack_id) for f in failures] * 2)
        await s.consumed(f"{s.env['TOPIC_PREFIX']}packline-credits", sent)
        assert await s.balance(user) == 7

        # (d) the operator fixes the cause and replays: images complete, the user pays for them
        s.stack.stop("generation")
        s.stack.env["LOCAL_IMAGE_PERMANENT_FAIL_KINDS"] = ""
        s.stack.start("generation")
        s.stack.wait_healthy(60, "generation")
        dry = cli(s, "dlq", "replay", "--pack", pack_id, "--dry-run", "--operator", "ops-test")
        assert dry.returncode == 0 and dry.stdout.count("would replay") == 3
        for _ in range(2):  # replaying the same entries twice produces each image once
            done = cli(s, "dlq", "replay", "--pack", pack_id, "--operator", "ops-test")
            assert done.returncode == 0, done.stderr
        events = await s.events(pack_id, user, last_event_id=events[-1].id)
        final = events[-1].json()
        assert final["status"] == "COMPLETED" and final["charged"] == SIX and final["refunded"] == 0
        assert await s.balance(user) == 4
        replayed = [c for c in s.provider_calls(pack_id) if c["run"] != 0]
        assert sorted((c["image_id"], c["outcome"]) for c in replayed) == sorted((k, "ok") for k in failed)
        history = cli(s, "dlq", "history", "--json")
        assert [h["dry_run"] for h in json.loads(history.stdout)] == [True, False, False]
        audit = cli(s, "audit", "--grace", "0")
        assert audit.returncode == 0, audit.stdout + audit.stderr


async def test_garbage_is_dead_lettered_and_the_pipeline_moves_on(stack: RunningStack) -> None:
    publisher = Publisher(stack.kafka, "test")
    await publisher.start()
    garbage = [b"\xff\xfe not json", b'{"type": "pack.requested", "version": 1}', b"[1,2,3]"]
    for topic in (stack.topics.packs_requested, stack.topics.images_jobs):
        await publisher.send([Outgoing(topic, g, b"k") for g in garbage])
    await publisher.stop()
    user = await stack.create_user(credits=10)
    pack_id = (await stack.post_pack(user)).json()["pack_id"]
    assert (await stack.events(pack_id, user))[-1].json()["status"] == "COMPLETED"

    dead = await stack.records(stack.topics.invalid_dlq)
    origins = [dict(r.headers)["x-original-topic"].decode() for r in dead]
    assert origins.count(stack.topics.packs_requested) >= 3 and origins.count(stack.topics.images_jobs) >= 3
    assert {r.value for r in dead} >= set(garbage)  # the original bytes are kept for inspection
    reasons = " ".join(dict(r.headers)["x-error"].decode() for r in dead)
    assert "not JSON" in reasons and "fails its schema" in reasons and "not a JSON object" in reasons
    assert all(b"x-original-offset" in b"".join(k.encode() for k, _ in r.headers) for r in dead)


async def test_a_waiting_retry_does_not_delay_other_packs(stack: RunningStack) -> None:
    """Park one job per retry partition 30 s in the future, then run another pack: it
    completes before they are due, and none of them reaches the provider before it is due."""
    user = await stack.create_user(credits=10)
    parked = await stack.create_user(credits=10)
    due = int((time.time() + 30) * 1000)
    jobs = []
    for i in range(12):
        job = ImageJob(pack_id=f"00000000-0000-4000-8000-{i:012d}", user_id=parked, image_id="main", kind="main",
                       prompt="parked", attempt=2)
        headers = [("x-due-at", str(due).encode()), ("x-attempts", b"1"), ("x-original-topic", stack.topics.images_jobs.encode())]
        jobs.append(Outgoing(stack.topics.retry(30), job.encode(), str(job.pack_id).encode(), headers))
    await stack.publish(jobs)

    loop = asyncio.get_running_loop()
    start = loop.time()
    pack_id = (await stack.post_pack(user)).json()["pack_id"]
    events = await stack.events(pack_id, user)
    elapsed = loop.time() - start
    assert events[-1].json()["status"] == "COMPLETED"
    assert time.time() * 1000 < due, "the other pack had to wait for the parked retries"
    print(f"\nother pack completed in {elapsed * 1000:.0f} ms with 12 retries parked (image latency 200 ms)")

    parked_ids = {j.key.decode() for j in jobs}
    async with asyncio.timeout(90):  # they are due in 30 s at most
        while True:
            calls = [c for c in stack.provider_calls() if c["pack_id"] in parked_ids]
            if len(calls) >= len(parked_ids):
                break
            await asyncio.sleep(0.5)
    assert sorted(c["pack_id"] for c in calls) == sorted(parked_ids) and all(c["attempt"] == 2 for c in calls), calls
    early = sorted(due / 1000 - c["start"] for c in calls if c["start"] * 1000 < due)
    assert not early, f"{len(early)} parked jobs reached the provider before due, up to {early[-1]:.1f}s early"


def assert_called_no_sooner_than_due(retried: list[ConsumerRecord[bytes, bytes]], calls: list[dict[str, Any]]) -> None:
    """Each job on a retry tier (due at its x-due-at) reached the provider at or after that time."""
    assert retried
    for record in retried:
        job = decode(record.value, (ImageJob,))
        due_ms = int(dict(record.headers)["x-due-at"])
        call = next((c for c in calls if (c["pack_id"], c["image_id"], c["run"], c["attempt"])
                     == (str(job.pack_id), job.image_id, job.run, job.attempt)), None)
        assert call is not None, f"no provider call for {job.image_id} attempt {job.attempt}: {calls}"
        assert call["start"] * 1000 >= due_ms, f"{job.image_id} attempt {job.attempt} called {due_ms / 1000 - call['start']:.3f}s early"
