"""The api and the notifier scaled out behind nginx (deploy/nginx/, services/cli/proxy.py):
two instances of each under one origin. Both api instances serve; the per-user rate limit
holds for the whole deployment; an Idempotency-Key's first body holds on every api
instance and across a restart, and of two different bodies sent to two instances at the
same moment exactly one wins; an SSE client on the proxy keeps its stream, with no gap
and no duplicate, across kill -9 of the notifier instance serving it."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from services.api.handlers import PackRequestBody, request_hash
from services.cli import sse
from services.cli.proxy import Proxy, nginx_binary
from shared.devbroker import free_port
from shared.events import IdempotencyClaimed, PackRequested
from tests.harness import RunningStack, restart

pytestmark = pytest.mark.e2e

INSTANCES = ("credits", "generation", "api-1", "api-2", "notifier-1", "notifier-2")
APIS, NOTIFIERS = ("api-1", "api-2"), ("notifier-1", "notifier-2")
ONE_IMAGE = {"images": ["main"]}


class Scaled:
    def __init__(self, stack: RunningStack, proxy: Proxy) -> None:
        self.s, self.proxy = stack, proxy

    def url(self, where: str) -> str:
        """`proxy`, or an instance's own address."""
        return self.proxy.url if where == "proxy" else self.s.stack.url(where)

    async def post(self, where: str, user: str, body: dict[str, Any], **headers: str) -> httpx.Response:
        async with httpx.AsyncClient(timeout=30) as client:
            return await client.post(f"{self.url(where)}/v1/packs", json=body, headers={**self.s.auth(user), **headers})

    async def health(self, where: str) -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=10) as client:
            body: dict[str, Any] = (await client.get(f"{self.url(where)}/healthz")).json()
            return body


@pytest.fixture(scope="module")
def scaled(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scaled]:
    if nginx_binary() is None:
        if os.environ.get("CI"):
            raise RuntimeError("nginx is not installed (.ci/run installs it)")
        pytest.skip("nginx is not installed: apt-get install -y nginx")
    tmp = tmp_path_factory.mktemp("scaled")
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    with RunningStack.started(
        kafka_bootstrap, tmp, INSTANCES, API_PUBLIC_URL=public, NOTIFIER_PUBLIC_URL=public,
        # The deployment's limit: 8 requests at once per user, hardly any refill during the test.
        RATE_LIMIT_BURST="8", RATE_LIMIT_PER_S="0.02",
        # Images of 1-3 s, so a stream is still open when its notifier is killed.
        LOCAL_IMAGE_LATENCY_MS="2000", LOCAL_IMAGE_JITTER_MS="1000",
    ) as s:
        proxy = Proxy(tmp / "nginx", tmp / "logs", port, [s.stack.port(n) for n in APIS], [s.stack.port(n) for n in NOTIFIERS])
        proxy.start()
        try:
            proxy.wait_ready()
            yield Scaled(s, proxy)
        finally:
            proxy.stop()


async def live_instances(sc: Scaled, expected: int, timeout: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        seen = [(await sc.health(api)).get("instances") for api in APIS]
        if seen == [expected] * len(APIS):
            return
        assert asyncio.get_running_loop().time() < deadline, f"api instances see {seen} live instances"
        await asyncio.sleep(0.2)


async def test_the_rate_limit_holds_for_the_whole_deployment(scaled: Scaled) -> None:
    await live_instances(scaled, 2)
    user = await scaled.s.create_user(credits=50)
    body = {"product": {"name": "Rate"}, **ONE_IMAGE}
    codes = [(await scaled.post(APIS[i % 2], user, body)).status_code for i in range(12)]
    # Burst 8 for the deployment: 4 per instance, however the requests are spread.
    assert codes.count(202) == 8 and codes.count(429) == 4, codes
    assert (await scaled.post("proxy", user, body)).status_code == 429


async def test_packs_are_accepted_by_both_api_instances_and_followed_through_the_proxy(scaled: Scaled) -> None:
    s, proxy = scaled.s, scaled.proxy
    user = await s.create_user(credits=40)
    accepted = []
    for where in ("api-1", "api-2", "proxy", "proxy"):
        r = await scaled.post(where, user, {"product": {"name": f"via {where}"}, **ONE_IMAGE})
        assert r.status_code == 202, r.text
        body = r.json()
        # The contract's absolute URLs name the one public origin, whichever instance answered.
        assert body["status_url"] == f"{proxy.url}/v1/packs/{body['pack_id']}"
        assert body["stream_url"] == f"{proxy.url}/v1/packs/{body['pack_id']}/events"
        accepted.append(body)
    async with httpx.AsyncClient(timeout=30) as client:
        for body in accepted:
            events = [ev async for ev in sse.follow(body["stream_url"], s.auth(user), retries=5)]
            final = events[-1].json()
            assert events[-1].event == "pack" and final["status"] == "COMPLETED"
            image = await client.get(final["images"][0]["url"], headers=s.auth(user))  # the api, through the proxy
            assert image.status_code == 200 and image.headers["content-type"] == "image/png"
            snapshot = await client.get(body["status_url"], headers=s.auth(user))
            assert snapshot.status_code == 200 and snapshot.json()["status"] == "COMPLETED"


async def serving_notifier(sc: Scaled) -> str:
    """The notifier instance with an open SSE connection."""
    for _ in range(50):
        for name in NOTIFIERS:
            if any(v >= 1 for _, v in await sc.s.metric(name, "packline_sse_subscribers")):
                return name
        await asyncio.sleep(0.1)
    raise AssertionError("no notifier has an open stream")


async def test_an_sse_client_on_the_proxy_survives_kill_9_of_its_notifier(scaled: Scaled) -> None:
    s = scaled.s
    user = await s.create_user(credits=10)
    accepted = (await scaled.post("proxy", user, {"product": {"name": "Kill the notifier"}})).json()
    got: list[sse.SseEvent] = []
    killed: dict[str, int] = {}

    async def follow() -> None:
        async for ev in sse.follow(accepted["stream_url"], s.auth(user), last_event_id="0", retries=20):
            got.append(ev)
            if len(got) == 3 and not killed:
                victim = await serving_notifier(scaled)
                s.stack.signal(victim, signal.SIGKILL)
                killed[victim] = len(got)

    await asyncio.wait_for(follow(), 90)
    [(victim, at)] = killed.items()
    try:
        assert len(got) > at, "the pack finished before its notifier was killed"
        assert got[-1].event == "pack" and got[-1].json()["status"] == "COMPLETED"
        # No gap and no duplicate: the ids run 1, 2, 3, ... across the two instances.
        assert [int(e.id or 0) for e in got] == list(range(1, len(got) + 1))
        replay = [ev async for ev in sse.follow(accepted["stream_url"], s.auth(user), last_event_id="0", retries=5)]
        assert [(e.id, e.event, e.data) for e in replay] == [(e.id, e.event, e.data) for e in got]
    finally:
        s.stack.procs[victim].wait()
        s.stack.start(victim)
        s.stack.wait_healthy(90, victim)


def body_hash(body: dict[str, Any]) -> str:
    return request_hash(PackRequestBody.model_validate(body))


async def test_an_idempotency_conflict_holds_on_every_instance_and_after_a_restart(scaled: Scaled) -> None:
    user = await scaled.s.create_user(credits=20)
    key = f"order-{uuid.uuid4().hex[:8]}"
    first, other = {"product": {"name": "First"}, **ONE_IMAGE}, {"product": {"name": "Other"}, **ONE_IMAGE}
    accepted = await scaled.post("api-1", user, first, **{"Idempotency-Key": key})
    assert accepted.status_code == 202
    pack_id = accepted.json()["pack_id"]
    assert (await scaled.post("api-2", user, other, **{"Idempotency-Key": key})).status_code == 409
    again = await scaled.post("api-2", user, first, **{"Idempotency-Key": key})
    assert again.status_code == 202 and again.json()["pack_id"] == pack_id
    assert (await scaled.post("proxy", user, other, **{"Idempotency-Key": key})).status_code == 409
    restart(scaled.s, "api-1")
    assert (await scaled.post("api-1", user, other, **{"Idempotency-Key": key})).status_code == 409
    after = await scaled.post("api-1", user, first, **{"Idempotency-Key": key})
    assert after.status_code == 202 and after.json()["pack_id"] == pack_id


async def test_two_bodies_at_the_same_moment_on_two_instances_one_wins(scaled: Scaled) -> None:
    s = scaled.s
    user = await s.create_user(credits=20)
    key = f"race-{uuid.uuid4().hex[:8]}"
    bodies = [{"product": {"name": "Body A"}, **ONE_IMAGE}, {"product": {"name": "Body B"}, **ONE_IMAGE}]
    posts = (scaled.post(api, user, body, **{"Idempotency-Key": key}) for api, body in zip(APIS, bodies, strict=True))
    answers = await asyncio.gather(*posts)
    codes = [r.status_code for r in answers]
    assert sorted(codes) == [202, 409], codes
    winner = bodies[codes.index(202)]
    pack_id = answers[codes.index(202)].json()["pack_id"]
    # Only the winner's body was published: credits charges it, generation makes it.
    requested = [ev for ev in await s.decoded(s.topics.packs_requested) if isinstance(ev, PackRequested) and str(ev.pack_id) == pack_id]
    assert requested and {ev.request_hash for ev in requested} == {body_hash(winner)}
    # Both instances now answer the loser with 409, the winner with its pack.
    for api in APIS:
        assert (await scaled.post(api, user, bodies[codes.index(409)], **{"Idempotency-Key": key})).status_code == 409
    # The newest record of the key is the winner's again (what compaction keeps).
    deadline = asyncio.get_running_loop().time() + 20
    while True:
        claims = [ev for ev in await s.decoded(s.topics.api_idempotency)
                  if isinstance(ev, IdempotencyClaimed) and ev.user_id == user and ev.idempotency_key == key]
        if claims and claims[0].request_hash == claims[-1].request_hash == body_hash(winner):
            break
        assert asyncio.get_running_loop().time() < deadline, [c.request_hash for c in claims]
        await asyncio.sleep(0.2)
