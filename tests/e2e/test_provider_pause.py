"""Pausing the provider during an outage, on a real stack with two generation processes:
while paused, no provider call starts in either (the local backend's call log), every
image job waits in its process (nothing lost, nothing failed), and a process restarted
while paused starts paused; after the resume, every pack completes with one call per
image. Both switches are on ops.audit under the operator's key."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from shared.events import ProviderControl, decode
from tests.harness import OPERATOR, RunningStack, read_provider_calls, restart

pytestmark = pytest.mark.e2e
GENERATION = ["generation-1", "generation-2"]
PACKS, IMAGES = 3, 6


@pytest.fixture(scope="module")
def s(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    with RunningStack.started(kafka_bootstrap, tmp_path_factory.mktemp("pause"),
                              services=("credits", *GENERATION, "api", "notifier")) as running:
        yield running


async def total(s: RunningStack, metric: str) -> list[float]:
    return [sum(v for _, v in await s.metric(name, metric)) for name in GENERATION]


async def until(what: str, check: Any, timeout: float = 60) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.2)


async def test_while_paused_no_call_starts_and_after_resume_every_pack_completes(s: RunningStack) -> None:
    ops = {"Authorization": f"Bearer {s.env['PACKLINE_OPERATOR_KEY']}"}
    calls_log = s.env["LOCAL_IMAGE_CALL_LOG"]
    await s.shares_settled(GENERATION)
    async with httpx.AsyncClient(base_url=s.api, timeout=30) as client:
        paused = await client.post("/v1/ops/provider/pause", headers=ops, json={"reason": "provider outage"})
        assert paused.status_code == 200 and paused.json()["paused"] is True, paused.text

        async def both_paused() -> bool:
            return await total(s, "packline_provider_paused") == [1.0, 1.0]

        await until("not every generation process follows the pause", both_paused)
        state = (await client.get("/v1/ops/provider", headers=ops)).json()
        assert (state["paused"], state["operator"], state["reason"]) == (True, OPERATOR, "provider outage")

        user = await s.create_user(credits=PACKS * IMAGES + 2)
        packs = [(await s.post_pack(user)).json()["pack_id"] for _ in range(PACKS)]

        async def all_held() -> bool:  # every job has reached a process and waits there for the provider
            return sum(await total(s, "packline_provider_held")) == PACKS * IMAGES

        await until("the image jobs did not all reach the paused limiters", all_held, timeout=90)
        await asyncio.sleep(3)  # a window for a call to start if the pause leaked
        assert read_provider_calls(calls_log, started=True) == []
        assert sum(await total(s, "packline_provider_held")) == PACKS * IMAGES
        for pack_id in packs:
            snap = (await s.snapshot(pack_id, user)).json()
            assert snap["status"] == "PROCESSING", snap
            assert [i["status"] for i in snap["images"]] == ["PENDING"] * IMAGES, snap

        # A process restarted during the outage (a deploy) is paused before it takes a job:
        # its held jobs go back to the group unstarted, and still no call starts.
        await asyncio.to_thread(restart, s, "generation-2")
        assert await total(s, "packline_provider_paused") == [1.0, 1.0]
        await s.shares_settled(GENERATION)
        assert read_provider_calls(calls_log, started=True) == []

        resumed_at = time.time()
        resumed = await client.post("/v1/ops/provider/resume", headers=ops, json={})
        assert resumed.status_code == 200 and resumed.json()["paused"] is False

    for pack_id in packs:
        final = (await s.events(pack_id, user))[-1].json()
        assert (final["status"], final["charged"], final["refunded"]) == ("COMPLETED", IMAGES, 0), final
    started = read_provider_calls(calls_log, started=True)
    assert len(started) == PACKS * IMAGES and min(c["start"] for c in started) >= resumed_at
    ended = s.provider_calls()
    assert sorted((c["pack_id"], c["image_id"]) for c in ended) == sorted({(c["pack_id"], c["image_id"]) for c in started})
    assert {c["outcome"] for c in ended} == {"ok"}
    assert sum(await total(s, "packline_provider_held")) == 0
    assert await s.balance(user) == 2

    switches = [ev for ev in await s.decoded(s.topics.ops_audit) if isinstance(ev, ProviderControl)]
    assert [(ev.paused, ev.operator) for ev in switches] == [(True, OPERATOR), (False, OPERATOR)]
    assert all(ev.key_id for ev in switches)
    control = [decode(r.value) for r in await s.records(s.topics.generation_control)]
    assert [getattr(ev, "paused", None) for ev in control] == [True, False]
