"""Poison messages on every topic a service reads: each lands on invalid.dlq with where it
came from and why, and the messages around it are handled. Real broker, real processes."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from shared.events import ImageJob, decode
from shared.kafka import Outgoing, header, original_headers
from tests.harness import RunningStack, run_cli

pytestmark = pytest.mark.e2e


def job(pack_id: str, image_id: str, user: str) -> ImageJob:
    return ImageJob(pack_id=pack_id, user_id=user, image_id=image_id, kind="main", prompt="retried", attempt=2)


async def wait_for(what: str, probe: Callable[[], Any], timeout: float = 60) -> Any:
    """The first truthy result of `probe` (a coroutine function), polled until `timeout`."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        found = await probe()
        if found:
            return found
        assert asyncio.get_running_loop().time() < deadline, f"still waiting for {what}"
        await asyncio.sleep(0.3)


async def test_a_bad_due_header_among_good_retries(stack: RunningStack) -> None:
    """One retry tier partition holds good, bad, good: the good ones reach images.jobs, the
    bad one is on invalid.dlq with its origin and reason, the tier's group commits past all
    three; replayed after the fix (its bad header dropped), it goes through too."""
    user = await stack.create_user(credits=10)
    pack_id = str(uuid.uuid4())
    good1, bad, good2 = (job(pack_id, image, user) for image in ("main", "detail", "scale"))
    now = str(int(time.time() * 1000)).encode()
    base = [("x-attempts", b"1"), ("x-original-topic", stack.topics.images_jobs.encode())]
    tier = stack.topics.retry(1)
    sent = await stack.publish([
        Outgoing(tier, good1.encode(), pack_id.encode(), [*base, ("x-due-at", now)]),
        Outgoing(tier, bad.encode(), pack_id.encode(), [*base, ("x-due-at", b"tomorrow morning")]),
        Outgoing(tier, good2.encode(), pack_id.encode(), [*base, ("x-due-at", now)]),
    ])
    assert len({m.partition for m in sent}) == 1  # one partition, in this order

    await stack.consumed(f"{stack.env['TOPIC_PREFIX']}packline-generation-retry", sent)
    forwarded = {decode(r.value).event_id for r in await stack.records(stack.topics.images_jobs)}
    assert {good1.event_id, good2.event_id} <= forwarded and bad.event_id not in forwarded
    dead = [r for r in await stack.records(stack.topics.invalid_dlq) if header(r.headers, "x-original-topic") == tier]
    assert len(dead) == 1
    [entry] = dead
    assert decode(entry.value).event_id == bad.event_id and entry.key == pack_id.encode()
    assert header(entry.headers, "x-original-offset") == str(sent[1].offset)
    assert header(entry.headers, "x-bad-header") == "x-due-at"
    assert "malformed x-due-at header: 'tomorrow morning'" in (header(entry.headers, "x-error") or "")
    assert ("x-due-at", b"tomorrow morning") in original_headers(entry.headers)
    # Both good jobs were run (the provider was called for them).
    await wait_for("the good jobs to run", lambda: _ran(stack, pack_id, {"main", "scale"}))

    entry_id = f"invalid:{entry.partition}:{entry.offset}"
    listed = {e["id"]: e for e in json.loads((await run_cli(stack, "dlq", "list", "--json")).stdout)}
    assert listed[entry_id]["original_topic"] == tier and listed[entry_id]["replayable"]
    assert listed[entry_id]["replays"] == 0 and not listed[entry_id]["parked"]
    out = await run_cli(stack, "dlq", "replay", entry_id)
    assert f"replaying {entry_id}: to {tier}" in out.stdout
    await wait_for("the replayed job on images.jobs", lambda: _on_jobs(stack, bad.event_id))
    await wait_for("the replayed job to run", lambda: _ran(stack, pack_id, {"detail"}))
    listed = {e["id"]: e for e in json.loads((await run_cli(stack, "dlq", "list", "--json")).stdout)}
    assert listed[entry_id]["replays"] == 1 and listed[entry_id]["replayed_by"] == ["ops-test"]


async def _ran(stack: RunningStack, pack_id: str, images: set[str]) -> bool:
    return images <= {c["image_id"] for c in stack.provider_calls(pack_id)}


async def _on_jobs(stack: RunningStack, event_id: str) -> bool:
    return any(decode(r.value).event_id == event_id for r in await stack.records(stack.topics.images_jobs))


async def test_poison_on_feeds_and_control_topics(stack: RunningStack) -> None:
    """Garbage on packs.status (the notifier), auth.revocations (api and notifier), auth.keys,
    api.idempotency and api.instances (the api), and a malformed job on a retry tier: each
    is on invalid.dlq once per origin, and the pipeline, the keys and revocations work on."""
    t = stack.topics
    garbage = {
        t.packs_status: b'{"type": "pack.status", "version": 1, "status": 12}',
        t.auth_revocations: b"\xff not json",
        t.auth_keys: b"[1, 2]",
        t.api_idempotency: b'{"type": "idempotency.claimed"}',
        t.api_instances: b'"hello"',
        t.retry(5): b'{"type": "image.job", "version": 1}',
    }
    sent = await stack.publish([
        Outgoing(topic, value, b"poison", [("x-due-at", b"0")]) for topic, value in garbage.items()
    ])
    origin = {(m.topic, m.partition, m.offset) for m in sent}

    async def dead_letters() -> dict[tuple[str, int, int], list[Any]]:
        found: dict[tuple[str, int, int], list[Any]] = {}
        for r in await stack.records(t.invalid_dlq):
            key = (header(r.headers, "x-original-topic") or "", int(header(r.headers, "x-original-partition") or -1),
                   int(header(r.headers, "x-original-offset") or -1))
            if key in origin:
                found.setdefault(key, []).append(r)
        return found if len(found) == len(origin) else {}

    found = await wait_for("every poison message on invalid.dlq", dead_letters)
    for (topic, _, _), records in found.items():
        assert all(r.value == garbage[topic] and r.key == b"poison" and header(r.headers, "x-error") for r in records)
    # The revocation feed is read by the api and the notifier: two copies, one entry.
    listed = [e for e in json.loads((await run_cli(stack, "dlq", "list", "--json")).stdout)
              if e["original_topic"] == t.auth_revocations]
    assert len(listed) == 1 and listed[0]["copies"] == len(found[(sent[1].topic, sent[1].partition, sent[1].offset)])

    # What comes after the poison is still read: a pack completes, a revocation takes effect.
    user = await stack.create_user(credits=10)
    pack_id = (await stack.post_pack(user)).json()["pack_id"]
    assert (await stack.events(pack_id, user))[-1].json()["status"] == "COMPLETED"
    key_line = (await run_cli(stack, "accounts", "keys", "create", user, "--name", "ci", "--scope", "packs:read")).stdout
    key, key_id = key_line.strip().splitlines()[-1], key_line.split()[1]
    await run_cli(stack, "accounts", "keys", "revoke", key_id)

    async def refused() -> bool:
        async with httpx.AsyncClient(timeout=10) as client:
            got = await client.get(f"{stack.notifier}/v1/packs/{pack_id}", headers={"Authorization": f"Bearer {key}"})
        return got.status_code == 401

    await wait_for("the revoked key to be refused", refused)  # read past the poison on auth.revocations
