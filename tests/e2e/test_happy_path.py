"""One pack end to end through four separate processes on the real broker."""

from __future__ import annotations

import asyncio
import os
import uuid

import httpx
import pytest
from aiokafka import AIOKafkaConsumer

from shared.admin import partitions_of
from shared.auth import make_api_key
from shared.client import request_pack
from shared.events import LISTING_KINDS, PackStatus, Product, decode
from shared.kafka import Publisher
from tests.harness import RunningStack

pytestmark = pytest.mark.e2e


def statuses(events: list) -> list[str]:  # type: ignore[type-arg]
    return [f"{e.event}:{e.json()['status']}" + (f":{e.json()['image_id']}" if e.event == "image" else "") for e in events]


async def test_pack_flows_draft_to_completed_and_is_charged_once(stack: RunningStack) -> None:
    user = await stack.create_user(credits=10)
    first = await stack.post_pack(user, **{"Idempotency-Key": "order-1"})
    assert first.status_code == 202, first.text
    body = first.json()
    assert body["status"] == "DRAFT" and body["cost"] == 6
    assert body["stream_url"] == f"{stack.notifier}/v1/packs/{body['pack_id']}/events"
    assert body["status_url"] == f"{stack.notifier}/v1/packs/{body['pack_id']}"
    again = await stack.post_pack(user, **{"Idempotency-Key": "order-1"})
    assert again.status_code == 202 and again.json()["pack_id"] == body["pack_id"]

    events = await stack.events(body["pack_id"], user)
    seq = statuses(events)
    assert seq[0] == "pack:DRAFT" and seq[1] == "pack:PROCESSING", seq
    assert seq[-1] == "pack:COMPLETED", seq
    completed = {s.split(":")[2] for s in seq if s.startswith("image:COMPLETED")}
    assert completed == set(LISTING_KINDS)
    for kind in LISTING_KINDS:  # every image went GENERATING before COMPLETED
        assert seq.index(f"image:GENERATING:{kind}") < seq.index(f"image:COMPLETED:{kind}")
    ids = [int(e.id) for e in events]
    assert ids == sorted(set(ids)), "SSE ids must strictly increase"

    final = events[-1].json()
    assert (final["charged"], final["refunded"], final["cost"]) == (6, 0, 6)
    assert await stack.balance(user) == 4  # charged once although posted twice

    async with httpx.AsyncClient() as client:
        for img in final["images"]:
            png = await client.get(img["url"], headers=stack.auth(user))
            assert png.status_code == 200 and png.content.startswith(b"\x89PNG\r\n\x1a\n")
            assert (await client.get(img["url"], headers=stack.auth("someone-else"))).status_code == 404
    snap = await stack.snapshot(body["pack_id"], user)
    assert snap.status_code == 200 and snap.json()["status"] == "COMPLETED"


async def test_the_workers_run_niced_and_the_edges_do_not(stack: RunningStack) -> None:
    """Under a burst that saturates the host, the api and the notifier get the CPU first."""
    base = os.getpriority(os.PRIO_PROCESS, 0)
    nice = {name: os.getpriority(os.PRIO_PROCESS, proc.pid) - base for name, proc in stack.stack.procs.items()}
    assert nice == {"credits": 10, "generation": 10, "api": 0, "notifier": 0}



async def test_same_idempotency_key_with_other_body_is_409(stack: RunningStack) -> None:
    user = await stack.create_user(credits=10)
    assert (await stack.post_pack(user, **{"Idempotency-Key": "k"})).status_code == 202
    other = {"product": {"name": "Another thing"}, "images": ["main"]}
    conflict = await stack.post_pack(user, other, **{"Idempotency-Key": "k"})
    assert conflict.status_code == 409 and "Idempotency-Key" in conflict.json()["detail"]


async def test_insufficient_credits_is_rejected_without_debit(stack: RunningStack) -> None:
    user = await stack.create_user(credits=3)
    response = await stack.post_pack(user)
    assert response.status_code == 202
    events = await stack.events(response.json()["pack_id"], user)
    assert statuses(events) == ["pack:DRAFT", "pack:REJECTED"]
    assert "insufficient credits" in events[-1].json()["reason"]
    assert events[-1].json()["charged"] == 0
    assert await stack.balance(user) == 3


@pytest.mark.parametrize(
    "body, fragment",
    [
        ({"product": {"name": ""}}, "product"),
        ({"product": {"name": "x"}, "images": ["hero"]}, "images"),
        ({"product": {"name": "x"}, "images": ["main", "main"]}, "repeat"),
        ({"product": {"name": "x"}, "surprise": 1}, "surprise"),
        ({"images": ["main"]}, "product"),
    ],
)
async def test_bad_bodies_get_422_with_a_message(stack: RunningStack, body: dict, fragment: str) -> None:  # type: ignore[type-arg]
    user = await stack.create_user(credits=10)
    response = await stack.post_pack(user, body)
    assert response.status_code == 422
    assert fragment in response.text


async def test_bad_or_missing_keys_get_401(stack: RunningStack) -> None:
    body = {"product": {"name": "x"}}
    keys = {
        "forged": "pk_YWxpY2U6MA.forgedforgedforgedforgedforgedfo",  # alice's payload, a made-up signature
        "mangled": stack.key("alice").replace("pk_", "pk_x"),
        "signed with another secret": make_api_key(uuid.uuid4().hex, "alice"),  # well formed, wrong secret
        "another user's signature": stack.key("bob").split(".")[0] + "." + stack.key("alice").split(".")[1],
    }
    async with httpx.AsyncClient() as client:
        assert (await client.post(f"{stack.api}/v1/packs", json=body)).status_code == 401
        codes = {name: (await client.post(f"{stack.api}/v1/packs", json=body, headers={"Authorization": f"Bearer {key}"})).status_code
                 for name, key in keys.items()}
        assert codes == dict.fromkeys(keys, 401), codes
        assert (await client.post(f"{stack.api}/v1/packs", json=body, headers=stack.auth("alice"))).status_code != 401
        pack = str(uuid.uuid4())
        for name, key in keys.items():
            got = (await client.get(f"{stack.notifier}/v1/packs/{pack}", headers={"Authorization": f"Bearer {key}"})).status_code
            assert got == 401, (name, got)
        assert (await client.get(f"{stack.notifier}/v1/packs/{pack}/events?token=st_bogus.x")).status_code == 401


async def test_packs_run_their_images_in_parallel(stack: RunningStack) -> None:
    """The six provider calls of a pack are all in flight at one instant (from the call log),
    and every image is GENERATING before any is COMPLETED on the pack's stream."""
    user = await stack.create_user(credits=10)
    pack_id = (await stack.post_pack(user)).json()["pack_id"]
    events = await stack.events(pack_id, user)
    assert events[-1].json()["status"] == "COMPLETED", statuses(events)
    calls = stack.provider_calls(pack_id)
    assert sorted(c["image_id"] for c in calls) == sorted(LISTING_KINDS), calls
    spans = {c["image_id"]: (round(c["start"] % 100, 3), round(c["end"] % 100, 3)) for c in calls}
    # Six intervals share an instant iff the last start comes before the first end.
    assert max(c["start"] for c in calls) < min(c["end"] for c in calls), f"calls ran one after another: {spans}"
    generating = [e for e in events if e.event == "image" and e.json()["status"] == "GENERATING"]
    completed = [e for e in events if e.event == "image" and e.json()["status"] == "COMPLETED"]
    first_done = min(int(e.id) for e in completed)
    assert len(generating) == len(LISTING_KINDS) and all(int(e.id) < first_done for e in generating), statuses(events)


async def test_a_pack_published_straight_to_kafka_completes(stack: RunningStack) -> None:
    """Another service skips HTTP: it produces pack.requested itself and follows packs.status."""
    user = await stack.create_user(credits=10)
    publisher = Publisher(stack.kafka, "other-service")
    await publisher.start()
    try:
        pack_id = await request_pack(publisher, user, Product(name="Desk lamp"), images=["main", "detail"], topics=stack.topics)
    finally:
        await publisher.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.bootstrap, group_id=None, auto_offset_reset="earliest")
    await consumer.start()
    try:
        consumer.assign(await partitions_of(stack.kafka, stack.topics.packs_status))
        seen: list[str] = []
        async with asyncio.timeout(60):
            while "COMPLETED" not in seen:
                for messages in (await consumer.getmany(timeout_ms=500)).values():
                    for m in messages:
                        ev = decode(m.value)
                        if isinstance(ev, PackStatus) and str(ev.pack_id) == pack_id:
                            seen.append(ev.status)
    finally:
        await consumer.stop()
    assert seen == ["DRAFT", "PROCESSING", "COMPLETED"]
    assert await stack.balance(user) == 8
