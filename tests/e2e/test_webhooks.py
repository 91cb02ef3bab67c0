"""Webhooks end to end, on the real broker with the services as processes: a receiver (a
real HTTP server on 127.0.0.1) gets signed deliveries of a pack and checks them with
`shared.webhooks.verify`; a receiver that answers 500 twice sees the retries; one that
stays down ends in webhooks.dlq and gets the delivery when an operator replays it; one
that hangs holds nobody else up."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shared.auth import make_named_key, new_key_id
from shared.devbroker import free_port
from shared.kafka import header
from shared.webhooks import verify
from tests.harness import RunningStack, restart, run_cli, serving

pytestmark = pytest.mark.e2e
WAIT_S = 90


@pytest.fixture(scope="module")
def hooks(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    with RunningStack.started(
        kafka_bootstrap, tmp_path_factory.mktemp("webhooks"), WEBHOOK_ALLOWED_HOSTS="127.0.0.1/32",
        WEBHOOK_MAX_ATTEMPTS="3", WEBHOOK_RETRY_BASE_S="1", WEBHOOK_TIMEOUT_S="60",
    ) as running:
        yield running


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    answered: int | None = None  # None while the request is still held open

    @property
    def payload(self) -> dict[str, Any]:
        return dict(json.loads(self.body))


@dataclass
class Receiver:
    """Answers POST /<name> with the next planned status of that name (then 200); "hang"
    holds the request open until `release`."""

    port: int
    plans: dict[str, list[int | str]] = field(default_factory=dict)
    down: set[str] = field(default_factory=set)  # names answering 503 for as long as they are here
    got: list[Received] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    async def handle(self, request: Request) -> Response:
        name = request.path_params["name"]
        seen = Received(name, dict(request.headers), await request.body())
        self.got.append(seen)
        self.arrived.set()
        self.arrived = asyncio.Event()
        plan = self.plans.get(name) or []
        step = plan.pop(0) if plan else (503 if name in self.down else 200)
        if step == "hang":
            await self.release.wait()
            step = 200
        seen.answered = int(step)
        return Response(status_code=int(step))

    def of(self, name: str, kind: str | None = None) -> list[Received]:
        return [r for r in self.got if r.path == name and (kind is None or r.payload["type"] == kind)]

    async def until(self, check: Any, timeout: float = WAIT_S) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"receiver: condition not met; got {[(r.path, r.headers.get('webhook-id')) for r in self.got]}"
            waiter = self.arrived
            try:
                await asyncio.wait_for(waiter.wait(), min(remaining, 1.0))
            except TimeoutError:
                pass


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver(free_port())
    app = Starlette(routes=[Route("/{name}", r.handle, methods=["POST"])])
    async with serving(app, r.port):
        try:
            yield r
        finally:
            r.release.set()  # a hung request ends before the server stops


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def register(s: RunningStack, user: str, url: str, events: list[str] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"url": url} if events is None else {"url": url, "events": events}
    async with httpx.AsyncClient(timeout=30) as client:
        answer = await client.post(f"{s.api}/v1/webhooks", json=body, headers=s.auth(user))
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


async def attempts(s: RunningStack, user: str, endpoint_id: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(timeout=30) as client:
        answer = await client.get(f"{s.api}/v1/webhooks/{endpoint_id}/deliveries", headers=s.auth(user))
    assert answer.status_code == 200, answer.text
    return list(answer.json()["deliveries"])


async def attempts_until(s: RunningStack, user: str, endpoint_id: str, n: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + WAIT_S
    while len(found := await attempts(s, user, endpoint_id)) < n:
        assert time.monotonic() < deadline, f"{len(found)} attempts recorded, not {n}: {found}"
        await asyncio.sleep(0.3)
    return found


async def finished(s: RunningStack, user: str) -> str:
    """A pack of `user`, made to the end (its stream ends with the terminal status)."""
    answer = await s.post_pack(user)
    assert answer.status_code == 202, answer.text
    pack_id = str(answer.json()["pack_id"])
    events = await s.events(pack_id, user)
    assert events[-1].json()["status"] == "COMPLETED"
    return pack_id


async def test_endpoints_are_checked_listed_owned_and_deleted(hooks: RunningStack, receiver: Receiver) -> None:
    alice, bob = await hooks.create_user(5), await hooks.create_user(5)
    async with httpx.AsyncClient(timeout=30) as client:
        for url in ("http://10.1.2.3/hook", "http://127.0.0.2:9/hook", "http://[::1]:9/", "http://169.254.169.254/latest", "ftp://x.example/"):
            refused = await client.post(f"{hooks.api}/v1/webhooks", json={"url": url}, headers=hooks.auth(alice))
            assert refused.status_code == 422, (url, refused.text)
            [error] = refused.json()["detail"]  # FastAPI's 422 shape, as the spec documents it
            assert error["loc"] == ["body", "url"] and error["msg"], error
        bad = await client.post(f"{hooks.api}/v1/webhooks", json={"url": receiver.url("x"), "events": ["pack.nope"]},
                                headers=hooks.auth(alice))
        assert bad.status_code == 422
        made = await register(hooks, alice, receiver.url("x"))
        assert made["events"] == ["pack.terminal"] and made["secret"].startswith("whsec_") and made["id"].startswith("we_")
        listed = (await client.get(f"{hooks.api}/v1/webhooks", headers=hooks.auth(alice))).json()["webhooks"]
        assert [(w["id"], w["url"]) for w in listed] == [(made["id"], receiver.url("x"))] and "secret" not in listed[0]
        assert (await client.get(f"{hooks.api}/v1/webhooks", headers=hooks.auth(bob))).json()["webhooks"] == []
        for method, path in (("GET", f"/{made['id']}/deliveries"), ("DELETE", f"/{made['id']}")):
            other = await client.request(method, f"{hooks.api}/v1/webhooks{path}", headers=hooks.auth(bob))
            assert other.status_code == 404, other.text
        without_scope = make_named_key(hooks.secret, alice, new_key_id(), ["packs:read", "packs:write"])
        denied = await client.get(f"{hooks.api}/v1/webhooks", headers=bearer(without_scope))
        assert denied.status_code == 403 and "webhooks" in denied.json()["detail"]
        assert (await client.delete(f"{hooks.api}/v1/webhooks/{made['id']}", headers=hooks.auth(alice))).status_code == 200
        assert (await client.delete(f"{hooks.api}/v1/webhooks/{made['id']}", headers=hooks.auth(alice))).status_code == 404
        assert (await client.get(f"{hooks.api}/v1/webhooks", headers=hooks.auth(alice))).json()["webhooks"] == []


async def test_a_pack_is_delivered_signed_as_its_snapshot(hooks: RunningStack, receiver: Receiver) -> None:
    user = await hooks.create_user(20)
    endpoint = await register(hooks, user, receiver.url("all"), ["pack.terminal", "image.status"])
    pack_id = await finished(hooks, user)
    await receiver.until(lambda: receiver.of("all", "pack.terminal"))
    [terminal] = receiver.of("all", "pack.terminal")
    assert verify(endpoint["secret"], terminal.headers, terminal.body)
    assert not verify(endpoint["secret"], terminal.headers, terminal.body.replace(b"COMPLETED", b"FAILED"))
    snapshot = (await hooks.snapshot(pack_id, user)).json()
    assert terminal.payload == {"type": "pack.terminal", "data": snapshot}
    # Every image's statuses, each signed; each image ends COMPLETED.
    await receiver.until(lambda: len({r.payload["data"]["image_id"] for r in receiver.of("all", "image.status")
                                      if r.payload["data"]["status"] == "COMPLETED"}) == len(snapshot["images"]))
    for r in receiver.of("all", "image.status"):
        assert verify(endpoint["secret"], r.headers, r.body) and r.payload["data"]["pack_id"] == pack_id
    ids = {r.headers["webhook-id"] for r in receiver.got}
    assert len(ids) == len(receiver.got)  # one webhook-id per delivery
    recorded = await attempts_until(hooks, user, endpoint["id"], len(receiver.got))
    assert {a["webhook_id"] for a in recorded} == ids
    assert all(a["ok"] and a["status_code"] == 200 and a["attempt"] == 1 and a["next"] == "done" for a in recorded)


async def test_a_failing_receiver_gets_retries_with_backoff(hooks: RunningStack, receiver: Receiver) -> None:
    user = await hooks.create_user(20)
    receiver.plans["flaky"] = [500, 500]
    endpoint = await register(hooks, user, receiver.url("flaky"))
    pack_id = await finished(hooks, user)
    await receiver.until(lambda: len(receiver.of("flaky")) == 3)
    got = receiver.of("flaky")
    assert [r.answered for r in got] == [500, 500, 200]
    assert len({r.headers["webhook-id"] for r in got}) == 1  # the same delivery, three times
    assert all(verify(endpoint["secret"], r.headers, r.body) and r.payload["data"]["pack_id"] == pack_id for r in got)
    recorded = await attempts_until(hooks, user, endpoint["id"], 3)
    assert [(a["attempt"], a["status_code"], a["next"]) for a in recorded] == [(1, 500, "retry"), (2, 500, "retry"), (3, 200, "done")]
    # The waits went through the retry tiers, doubling: 1 s (the 1 s tier), then 2 s (the 5 s tier).
    webhook_id = got[0].headers["webhook-id"]
    waits = []
    for tier in (1, 5):
        for r in await hooks.records(hooks.topics.webhook_retry(tier)):
            if header(r.headers, "x-webhook-id") == webhook_id:
                waits.append((tier, header(r.headers, "x-backoff-ms"), header(r.headers, "x-attempts")))
    assert waits == [(1, "1000", "1"), (5, "2000", "2")]


async def test_a_receiver_that_stays_down_is_dead_lettered_and_replayed(hooks: RunningStack, receiver: Receiver) -> None:
    user = await hooks.create_user(20)
    receiver.down.add("down")
    endpoint = await register(hooks, user, receiver.url("down"))
    pack_id = await finished(hooks, user)
    recorded = await attempts_until(hooks, user, endpoint["id"], 3)
    assert [(a["status_code"], a["next"]) for a in recorded] == [(503, "retry"), (503, "retry"), (503, "dead_letter")]
    webhook_id = recorded[0]["webhook_id"]
    listed = json.loads((await run_cli(hooks, "dlq", "list", "--json")).stdout)
    [entry] = [e for e in listed if e["image_id"] == webhook_id]
    assert entry["id"].startswith("webhook:") and entry["pack_id"] == pack_id and entry["replayable"]
    assert entry["attempts"] == 3 and entry["error"] == "HTTP 503"
    receiver.down.discard("down")  # the receiver is back
    await run_cli(hooks, "dlq", "replay", entry["id"])
    await receiver.until(lambda: any(r.answered == 200 for r in receiver.of("down")))
    replayed = [r for r in receiver.of("down") if r.answered == 200]
    assert [r.headers["webhook-id"] for r in replayed] == [webhook_id]
    assert verify(endpoint["secret"], replayed[0].headers, replayed[0].body)
    assert len(receiver.of("down")) == 4
    final = await attempts_until(hooks, user, endpoint["id"], 4)
    assert (final[-1]["attempt"], final[-1]["status_code"], final[-1]["next"]) == (1, 200, "done")


async def test_a_hung_receiver_holds_up_nobody_else(hooks: RunningStack, receiver: Receiver) -> None:
    slow_user, other_user = await hooks.create_user(20), await hooks.create_user(20)
    receiver.plans["hung"] = ["hang"]
    await register(hooks, slow_user, receiver.url("hung"))
    other = await register(hooks, other_user, receiver.url("other"))
    await finished(hooks, slow_user)
    await receiver.until(lambda: receiver.of("hung"))  # its delivery is now held open by the receiver
    other_pack = await finished(hooks, other_user)  # the pipeline goes on meanwhile
    await receiver.until(lambda: receiver.of("other"))
    [hung] = receiver.of("hung")
    [delivered] = receiver.of("other")
    assert hung.answered is None, "the other user's delivery came only after the hung one was answered"
    assert delivered.answered == 200 and delivered.payload["data"]["pack_id"] == other_pack
    assert verify(other["secret"], delivered.headers, delivered.body)
    receiver.release.set()
    await receiver.until(lambda: hung.answered == 200)


async def test_rotation_keeps_secrets_and_targets_are_checked_again_at_delivery(
    hooks: RunningStack, receiver: Receiver,
) -> None:
    """Last in this module: it restarts the api and the notifier with other settings."""
    user = await hooks.create_user(20)
    before = await register(hooks, user, receiver.url("before"))
    restart(hooks, "api", "notifier", PACKLINE_SECRETS=f"rotated-{hooks.secret},{hooks.secret}")
    after = await register(hooks, user, receiver.url("after"))
    async with httpx.AsyncClient(timeout=30) as client:  # the restarted api read the endpoints back from Kafka
        listed = (await client.get(f"{hooks.api}/v1/webhooks", headers=hooks.auth(user))).json()["webhooks"]
    assert [w["id"] for w in listed] == [before["id"], after["id"]]
    await finished(hooks, user)
    await receiver.until(lambda: receiver.of("before") and receiver.of("after"))
    [old], [new] = receiver.of("before"), receiver.of("after")
    assert verify(before["secret"], old.headers, old.body)  # an endpoint's secret outlives a rotation
    assert verify(after["secret"], new.headers, new.body) and after["secret"] != before["secret"]
    # The receiver's address is no longer allowed where deliveries are made: refused at delivery.
    restart(hooks, "notifier", WEBHOOK_ALLOWED_HOSTS="")
    await finished(hooks, user)
    recorded = await attempts_until(hooks, user, after["id"], 2)
    assert recorded[1]["status_code"] is None and "127.0.0.1" in recorded[1]["error"]
    assert "private, loopback or link-local" in recorded[1]["error"] and recorded[1]["next"] == "retry"
    assert len(receiver.of("after")) == 1
