"""The owner's changes to a pack on the real broker: cancel (before any image starts, with
calls in flight, with generation killed, racing completions) and regenerate after PARTIAL;
A+ modules chosen one by one. Money is checked against the ledger, provider calls against
the local backend's call log, and who won a race against the pack's log."""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from aiokafka.structs import RecordMetadata

from services.generation.consumer import group_id
from shared.events import ImageCompleted, PackCancel, PackRequested, Product, decode
from shared.kafka import Outgoing
from tests.harness import RunningStack, restart, results_applied, run_cli

pytestmark = pytest.mark.e2e
SLOW = {"LOCAL_IMAGE_LATENCY_MS": "60000", "LOCAL_IMAGE_LATENCY_BY_KIND": "main=100,detail=100"}


async def post(s: RunningStack, user: str, pack_id: str, action: str, body: dict[str, Any] | None = None) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as client:
        return await client.post(f"{s.api}/v1/packs/{pack_id}/{action}", json=body, headers=s.auth(user))


async def until_snapshot(s: RunningStack, pack_id: str, user: str, check: Any, timeout: float = 60) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        response = await s.snapshot(pack_id, user)
        if response.status_code == 200 and check(snap := response.json()):
            return snap
        assert asyncio.get_running_loop().time() < deadline, response.text
        await asyncio.sleep(0.2)


def statuses(snapshot: dict[str, Any]) -> dict[str, str]:
    return {img["image_id"]: img["status"] for img in snapshot["images"]}


async def jobs_handled(s: RunningStack, pack_id: str) -> None:
    """Until generation has committed past every job of the pack (each was handled)."""
    records = [r for r in await s.records(s.topics.images_jobs) if str(decode(r.value).pack_id) == pack_id]  # type: ignore[attr-defined]
    assert records
    await s.consumed(group_id(s.env["TOPIC_PREFIX"]), cast(list[RecordMetadata], records))


async def test_a_cancel_before_any_image_starts_refunds_all_and_never_calls_the_provider(
    kafka_bootstrap: str, tmp_path: Path,
) -> None:
    with RunningStack.started(kafka_bootstrap, tmp_path, services=("api", "credits", "notifier")) as s:  # no generation yet
        user, other = await s.create_user(credits=10), await s.create_user(credits=10)
        pack_id = (await s.post_pack(user)).json()["pack_id"]
        await until_snapshot(s, pack_id, user, lambda snap: snap["status"] == "PROCESSING")
        assert await s.balance(user) == 4
        assert (await post(s, other, pack_id, "cancel")).status_code == 404  # another user's pack
        assert (await post(s, user, "not-a-pack", "cancel")).status_code == 404
        await run_cli(s, "cancel", pack_id, "--user", user)
        final = (await s.events(pack_id, user))[-1].json()
        assert (final["status"], final["charged"], final["refunded"]) == ("CANCELLED", 0, 6)
        assert set(statuses(final).values()) == {"CANCELLED"}
        assert await s.balance(user) == 10
        again = await post(s, user, pack_id, "cancel")  # asked again: done already
        assert again.status_code == 202 and again.json()["status"] == "CANCELLED"

        s.stack.start("generation")  # its jobs are still on images.jobs: each is read, none is made
        s.stack.wait_healthy(90, "generation")
        await jobs_handled(s, pack_id)
        assert s.provider_calls(pack_id) == [] and await s.balance(user) == 10
        done = (await s.post_pack(user, {"product": {"name": "Mug"}, "images": ["main"]})).json()["pack_id"]
        assert (await s.events(done, user))[-1].json()["status"] == "COMPLETED"
        finished = await post(s, user, done, "cancel")
        assert finished.status_code == 409 and "COMPLETED" in finished.json()["detail"]
        assert (await run_cli(s, "audit", "--grace", "0")).stdout.rstrip().endswith("all invariants hold")


async def test_a_cancel_abandons_calls_in_flight_and_charges_what_was_delivered_also_if_generation_dies(
    kafka_bootstrap: str, tmp_path: Path,
) -> None:
    with RunningStack.started(kafka_bootstrap, tmp_path, **SLOW) as s:
        user = await s.create_user(credits=20)
        fast_done = lambda snap: statuses(snap)["main"] == statuses(snap)["detail"] == "COMPLETED"  # noqa: E731

        # 1. Calls in flight are cancelled; the two images delivered before the cancel stay charged.
        pack_id = (await s.post_pack(user)).json()["pack_id"]
        await until_snapshot(s, pack_id, user, fast_done)
        await results_applied(s, pack_id, {"main", "detail"})  # so both come before the cancel in the pack's log
        assert (await post(s, user, pack_id, "cancel")).status_code == 202
        final = (await s.events(pack_id, user))[-1].json()
        assert (final["status"], final["charged"], final["refunded"]) == ("CANCELLED", 2, 4)
        assert statuses(final) == {"main": "COMPLETED", "detail": "COMPLETED", "lifestyle": "CANCELLED",
                                   "infographic": "CANCELLED", "scale": "CANCELLED", "packaging": "CANCELLED"}
        slow = {"lifestyle", "infographic", "scale", "packaging"}
        for _ in range(100):  # the abandoned calls end as the cancel reaches generation
            calls = [c for c in s.provider_calls(pack_id) if c["image_id"] in slow]
            if len(calls) == len(slow):
                break
            await asyncio.sleep(0.2)
        assert sorted((c["image_id"], c["outcome"]) for c in calls) == [(k, "cancelled") for k in sorted(slow)]
        async with httpx.AsyncClient(timeout=30) as client:
            served = {img: (await client.get(f"{s.api}/v1/images/{pack_id}/{img}", headers=s.auth(user))).status_code
                      for img in ("main", "scale")}
        assert served == {"main": 200, "scale": 404}
        assert await s.balance(user) == 20 - 2

        # 2. Generation is SIGKILLed as the cancel is made: refunds happen once, and the
        #    restarted process makes none of the pack's images.
        pack_id = (await s.post_pack(user)).json()["pack_id"]
        await until_snapshot(s, pack_id, user, fast_done)
        await results_applied(s, pack_id, {"main", "detail"})  # so both come before the cancel in the pack's log
        cancelled = asyncio.create_task(post(s, user, pack_id, "cancel"))
        s.stack.signal("generation", signal.SIGKILL)
        assert (await cancelled).status_code == 202
        before = {c["pid"] for c in s.provider_calls(pack_id)}
        s.stack.procs["generation"].wait()
        s.stack.start("generation")
        s.stack.wait_healthy(90, "generation")
        await jobs_handled(s, pack_id)
        final = (await s.events(pack_id, user))[-1].json()
        assert (final["status"], final["charged"], final["refunded"]) == ("CANCELLED", 2, 4)
        assert {c["pid"] for c in s.provider_calls(pack_id)} == before  # nothing started by the new process
        assert await s.balance(user) == 20 - 4
        assert (await run_cli(s, "audit", "--grace", "0")).stdout.rstrip().endswith("all invariants hold")


async def test_a_cancel_racing_completions_is_decided_by_the_packs_log(kafka_bootstrap: str, tmp_path: Path) -> None:
    with RunningStack.started(kafka_bootstrap, tmp_path, LOCAL_IMAGE_LATENCY_MS="400", LOCAL_IMAGE_JITTER_MS="350") as s:
        user = await s.create_user(credits=30)
        packs = []
        for delay in (0.3, 0.45, 0.6):
            pack_id = (await s.post_pack(user)).json()["pack_id"]
            await until_snapshot(s, pack_id, user, lambda snap: "GENERATING" in statuses(snap).values())
            await asyncio.sleep(delay)
            response = await post(s, user, pack_id, "cancel")
            assert response.status_code in (202, 409), response.text  # 409: every image was done first
            packs.append((pack_id, response.status_code))
        results = await s.records(s.topics.images_results)
        charged = 0
        for pack_id, code in packs:
            final = (await s.events(pack_id, user))[-1].json()
            mine = [decode(r.value) for r in sorted(results, key=lambda r: r.offset)
                    if str(decode(r.value).pack_id) == pack_id]  # type: ignore[attr-defined]
            cut = next((i for i, ev in enumerate(mine) if isinstance(ev, PackCancel)), len(mine))
            before_cancel = {ev.image_id for ev in mine[:cut] if isinstance(ev, ImageCompleted)}
            completed = {img for img, status in statuses(final).items() if status == "COMPLETED"}
            assert completed == before_cancel, (pack_id, mine)  # delivered iff completed before the cancel in the log
            assert final["status"] == ("CANCELLED" if code == 202 else "COMPLETED")
            assert final["charged"] == len(completed) and final["refunded"] == 6 - len(completed)
            charged += len(completed)
        assert await s.balance(user) == 30 - charged
        assert (await run_cli(s, "audit", "--grace", "0")).stdout.rstrip().endswith("all invariants hold")


async def test_regenerate_makes_only_the_failed_images_again_on_the_same_stream(kafka_bootstrap: str, tmp_path: Path) -> None:
    with RunningStack.started(kafka_bootstrap, tmp_path, LOCAL_IMAGE_PERMANENT_FAIL_KINDS="detail,scale") as s:
        user, other = await s.create_user(credits=10), await s.create_user(credits=10)
        pack_id = (await s.post_pack(user)).json()["pack_id"]
        first = await s.events(pack_id, user)
        partial = first[-1].json()
        assert (partial["status"], partial["charged"], partial["refunded"]) == ("PARTIAL", 4, 2)
        assert (await post(s, other, pack_id, "regenerate")).status_code == 404
        assert (await post(s, user, pack_id, "regenerate", {"images": ["main"]})).status_code == 409  # not failed
        assert (await post(s, user, pack_id, "regenerate", {"images": ["aplus_story"]})).status_code == 422  # not in the pack
        assert (await post(s, user, pack_id, "regenerate", {"images": ["sideways"]})).status_code == 422  # no such kind
        assert await s.balance(user) == 6  # refused requests changed nothing

        restart(s, "generation", LOCAL_IMAGE_PERMANENT_FAIL_KINDS="")
        accepted = await post(s, user, pack_id, "regenerate")
        assert accepted.status_code == 202 and accepted.json()["run"] == 1, accepted.text
        busy = await post(s, user, pack_id, "regenerate")
        assert busy.status_code == 409  # one is running
        more = await s.events(pack_id, user, last_event_id=first[-1].id)  # the same stream, resumed
        assert int(more[0].id) > int(first[-1].id) and more[0].json()["status"] == "PROCESSING"
        final = more[-1].json()
        assert (final["status"], final["charged"], final["refunded"]) == ("COMPLETED", 6, 0)
        assert await s.balance(user) == 4
        again = sorted((c["image_id"], c["run"]) for c in s.provider_calls(pack_id) if c["run"] == 1)
        assert again == [("detail", 1), ("scale", 1)]  # only the failed images were made again
        assert (await post(s, user, pack_id, "regenerate")).status_code == 409
        assert (await run_cli(s, "audit", "--grace", "0")).stdout.rstrip().endswith("all invariants hold")


async def test_aplus_modules_are_chosen_and_priced_one_by_one(kafka_bootstrap: str, tmp_path: Path) -> None:
    with RunningStack.started(kafka_bootstrap, tmp_path) as s:
        user = await s.create_user(credits=40)
        chosen = await s.post_pack(user, {"product": {"name": "Tea"}, "images": ["main"], "aplus": ["aplus_story", "aplus_banner"]})
        assert chosen.status_code == 202 and chosen.json()["cost"] == 1 + 2 * 2
        final = (await s.events(chosen.json()["pack_id"], user))[-1].json()
        assert sorted(statuses(final)) == ["aplus_banner", "aplus_story", "main"] and final["charged"] == 5
        assert (await s.post_pack(user, {"product": {"name": "Tea"}, "aplus": True})).json()["cost"] == 6 + 4 * 2
        for bad in (["aplus_poster"], ["aplus_story", "aplus_story"], "aplus_story"):
            refused = await s.post_pack(user, {"product": {"name": "Tea"}, "aplus": bad})
            assert refused.status_code == 422, bad
        # A publisher still on pack.requested v1 (`aplus: true`): read as all four modules.
        v1 = PackRequested(user_id=user, product=Product(name="Tea"), images=["main"], pack_id=uuid.uuid4())
        raw = v1.model_dump(mode="json") | {"version": 1, "aplus": True}
        await s.publish([Outgoing(s.topics.packs_requested, json.dumps(raw).encode(), user.encode())])
        final = (await s.events(str(v1.pack_id), user))[-1].json()
        assert sorted(statuses(final)) == ["aplus_banner", "aplus_comparison", "aplus_features", "aplus_story", "main"]
        assert final["charged"] == 1 + 4 * 2, final

