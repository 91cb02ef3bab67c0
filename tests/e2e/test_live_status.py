"""Resumable SSE (also across a notifier restart), per-user isolation, tokens,
key revocation, the all-packs stream."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import httpx
import pytest

from services.cli import sse
from shared.auth import make_stream_token
from tests.harness import RunningStack

pytestmark = pytest.mark.e2e


async def first_events(s: RunningStack, pack_id: str, user: str, n: int) -> list[sse.SseEvent]:
    """Read n events, then drop the connection."""
    got: list[sse.SseEvent] = []
    async for ev in sse.follow(f"{s.notifier}/v1/packs/{pack_id}/events", s.auth(user), last_event_id="0", retries=0):
        got.append(ev)
        if len(got) == n:
            break
    return got


def same(a: list[sse.SseEvent], b: list[sse.SseEvent]) -> bool:
    return [(e.id, e.event, e.data) for e in a] == [(e.id, e.event, e.data) for e in b]


async def test_resume_after_a_dropped_connection_has_no_gap_and_no_duplicate(stack: RunningStack) -> None:
    user = await stack.create_user(credits=10)
    pack_id = (await stack.post_pack(user)).json()["pack_id"]
    head = await first_events(stack, pack_id, user, 3)
    rest = await stack.events(pack_id, user, last_event_id=head[-1].id)
    full = await stack.events(pack_id, user, last_event_id="0")
    assert same(head + rest, full)
    assert [int(e.id) for e in full] == list(range(1, len(full) + 1))


async def test_an_unknown_id_gets_the_snapshot_and_a_resync(stack: RunningStack) -> None:
    user = await stack.create_user(credits=10)
    pack_id = (await stack.post_pack(user)).json()["pack_id"]
    await stack.events(pack_id, user)
    events = await stack.events(pack_id, user, last_event_id="9999")
    assert [e.event for e in events] == ["pack", "resync"]
    assert events[0].json()["status"] == "COMPLETED"
    fresh = await stack.events(pack_id, user, last_event_id=None)  # no id: the snapshot, then the end
    assert [e.event for e in fresh] == ["pack"] and fresh[0].id == events[0].id


async def test_other_users_see_404_everywhere_and_tokens_are_scoped(stack: RunningStack) -> None:
    owner, other = await stack.create_user(credits=10), await stack.create_user(credits=10)
    accepted = (await stack.post_pack(owner)).json()
    pack_id = accepted["pack_id"]
    final = (await stack.events(pack_id, owner))[-1].json()
    async with httpx.AsyncClient(timeout=30) as client:
        assert (await client.get(f"{stack.notifier}/v1/packs/{pack_id}", headers=stack.auth(other))).status_code == 404
        assert (await client.get(f"{stack.notifier}/v1/packs/{pack_id}/events", headers=stack.auth(other))).status_code == 404
        assert (await client.get(final["images"][0]["url"], headers=stack.auth(other))).status_code == 404
        # The stream token works without a header, for this pack only.
        with_token = await client.get(f"{stack.notifier}/v1/packs/{pack_id}?token={accepted['stream_token']}")
        assert with_token.status_code == 200 and with_token.json()["status"] == "COMPLETED"
        other_pack = (await stack.post_pack(other)).json()["pack_id"]
        wrong = await client.get(f"{stack.notifier}/v1/packs/{other_pack}?token={accepted['stream_token']}")
        assert wrong.status_code == 401
        expired = make_stream_token(stack.secret, owner, pack_id, ttl_s=-1)
        assert (await client.get(f"{stack.notifier}/v1/packs/{pack_id}/events?token={expired}")).status_code == 401
        forged = make_stream_token("not-the-secret", owner, pack_id, ttl_s=60)
        assert (await client.get(f"{stack.notifier}/v1/packs/{pack_id}?token={forged}")).status_code == 401


async def test_revoked_keys_are_refused_by_api_and_notifier(stack: RunningStack) -> None:
    user = await stack.create_user(credits=10)
    old_key = {"Authorization": f"Bearer {stack.key(user)}"}
    pack_id = (await stack.post_pack(user)).json()["pack_id"]
    open_before: list[str] = []
    opened = asyncio.Event()

    async def follow_all_packs() -> None:  # never ends by itself: only the revocation ends it
        async for ev in sse.follow(f"{stack.notifier}/v1/events", old_key, retries=0):
            open_before.append(ev.event)
            opened.set()

    stream = asyncio.create_task(follow_all_packs())
    await asyncio.wait_for(opened.wait(), 30)
    env = {**os.environ, **stack.env}
    out = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "services.cli", "accounts", "revoke-key", user],
                                  env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    new_key = {"Authorization": f"Bearer {out.stdout.strip().splitlines()[-1]}"}
    async with httpx.AsyncClient(timeout=30) as client:
        for _ in range(100):  # revocations travel through Kafka: poll until both services know
            api = await client.post(f"{stack.api}/v1/packs", json={"product": {"name": "x"}}, headers=old_key)
            notifier = await client.get(f"{stack.notifier}/v1/packs/{pack_id}", headers=old_key)
            if api.status_code == notifier.status_code == 401:
                break
            await asyncio.sleep(0.1)
        assert api.status_code == 401 and "revoked" in api.text
        assert notifier.status_code == 401 and "revoked" in notifier.text
        assert (await client.get(f"{stack.notifier}/v1/packs/{pack_id}", headers=new_key)).status_code == 200
        assert (await client.post(f"{stack.api}/v1/packs", json={"product": {"name": "x"}}, headers=new_key)).status_code == 202
    await asyncio.wait_for(stream, 30)  # the stream opened before the revocation has ended
    assert open_before[-1] == "revoked"


async def test_the_all_packs_stream_carries_every_pack_of_the_user(stack: RunningStack) -> None:
    user = await stack.create_user(credits=20)
    seen: dict[str, str] = {}

    async def listen() -> None:
        async for ev in sse.follow(f"{stack.notifier}/v1/events", stack.auth(user), retries=0):
            data = ev.json()
            if ev.event == "pack":
                seen[data["pack_id"]] = data["status"]
            if len(seen) == 2 and set(seen.values()) == {"COMPLETED"}:
                return

    listener = asyncio.create_task(listen())
    await asyncio.sleep(0.5)
    packs = {(await stack.post_pack(user)).json()["pack_id"] for _ in range(2)}
    await asyncio.wait_for(listener, 60)
    assert set(seen) == packs


async def test_the_all_packs_stream_resumes_by_last_event_id(stack: RunningStack) -> None:
    user = await stack.create_user(credits=20)
    url = f"{stack.notifier}/v1/events"
    first = (await stack.post_pack(user)).json()["pack_id"]
    last_id = None
    async for ev in sse.follow(url, stack.auth(user), retries=0):
        if ev.event == "pack" and ev.json()["status"] == "COMPLETED":
            last_id = ev.id
            break  # the connection drops here
    assert last_id is not None
    second = (await stack.post_pack(user)).json()["pack_id"]
    everything = [ev.json()["seq"] for ev in await stack.events(second, user)]  # while nobody listens
    resumed = []
    async for ev in sse.follow(url, stack.auth(user), last_event_id=last_id, retries=0):
        resumed.append((ev.event, ev.json()["pack_id"], ev.json()["seq"]))
        if ev.event == "pack" and ev.json()["pack_id"] == second and ev.json()["status"] == "COMPLETED":
            break
    # Exactly what happened since: all of the second pack, in order, and nothing of the first again.
    assert {p for _, p, _ in resumed} == {second} and first != second
    assert [seq for _, _, seq in resumed] == everything


async def test_resume_across_a_notifier_restart(stack: RunningStack) -> None:
    """Kept last in the module: it restarts the shared notifier."""
    user = await stack.create_user(credits=10)
    pack_id = (await stack.post_pack(user)).json()["pack_id"]
    full = await stack.events(pack_id, user)
    stack.stack.stop("notifier")
    stack.stack.start("notifier")
    stack.stack.wait_healthy(60, "notifier")
    resumed = await stack.events(pack_id, user, last_event_id=full[2].id)
    assert same(full[3:], resumed)
