"""The notifier's event streams are served by its fast path (services/notifier/fastpath.py)
for an ordinary request and by the FastAPI routes for everything else: both must send the
same stream, and what the fast path does not take gets the routes' answers."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from shared.auth import make_named_key, new_key_id
from tests.harness import RunningStack

pytestmark = pytest.mark.e2e
HEADERS = ("content-type", "cache-control", "x-accel-buffering")


async def whole_stream(url: str, **headers: str) -> tuple[int, httpx.Headers, bytes]:
    """A finished pack's stream ends by itself: all of it."""
    async with httpx.AsyncClient(timeout=30) as client, client.stream("GET", url, headers=headers) as r:
        return r.status_code, r.headers, await r.aread()


async def first_bytes(url: str, **headers: str) -> tuple[int, httpx.Headers, bytes]:
    """The user stream never ends: its first chunk (the opening snapshot)."""
    async with httpx.AsyncClient(timeout=30) as client, client.stream("GET", url, headers=headers) as r:
        if r.status_code != 200:
            return r.status_code, r.headers, await r.aread()
        chunk = await asyncio.wait_for(anext(r.aiter_bytes()), 30)
        return r.status_code, r.headers, chunk


async def finished_pack(stack: RunningStack, user: str) -> str:
    accepted = await stack.post_pack(user)
    assert accepted.status_code == 202, accepted.text
    pack_id: str = accepted.json()["pack_id"]
    events = await stack.events(pack_id, user)
    assert events[-1].json()["status"] == "COMPLETED"
    return pack_id


async def test_the_fast_path_and_the_routes_send_the_same_streams(stack: RunningStack) -> None:
    user = await stack.create_user(credits=20)
    pack_id = await finished_pack(stack, user)
    url, auth = f"{stack.notifier}/v1/packs/{pack_id}/events", {"Authorization": f"Bearer {stack.key(user)}"}
    fast = await whole_stream(url, **auth, **{"Last-Event-ID": "0"})  # the whole history
    # An Origin (CORS to answer) and an unknown query parameter: both go to the route.
    routed = await whole_stream(f"{url}?last_event_id=0&flavour=plain", **auth, Origin=stack.api)
    assert fast[0] == routed[0] == 200
    assert [fast[1].get(h) for h in HEADERS] == [routed[1].get(h) for h in HEADERS], (fast[1], routed[1])
    assert fast[1]["content-type"].startswith("text/event-stream")
    assert "access-control-allow-origin" not in fast[1] and routed[1]["access-control-allow-origin"] == stack.api
    assert fast[2] == routed[2] and fast[2].count(b"id: ") >= 5, fast[2]
    resumed = await whole_stream(f"{url}?last_event_id=3", **auth)
    assert resumed[2] == (await whole_stream(url, **auth, **{"Last-Event-ID": "3"}))[2] != fast[2]
    assert resumed[2].startswith(b"id: 4\r\n"), resumed[2]
    assert (await whole_stream(url, **auth))[2].startswith(b"id: 15\r\nevent: pack\r\n")  # a finished pack: its snapshot
    users = [await first_bytes(f"{stack.notifier}/v1/events", **auth, **extra) for extra in ({}, {"Origin": stack.api})]
    assert users[0][0] == users[1][0] == 200 and users[0][2] == users[1][2] and pack_id.encode() in users[0][2]
    seen = await stack.metric("notifier", "packline_http_request_duration_seconds_count")
    for route in ("/v1/packs/{pack_id}/events", "/v1/events"):
        assert any(f'route="{route}"' in labels and 'status="200"' in labels for labels, _ in seen), (route, seen)


async def test_what_the_fast_path_does_not_take_gets_the_routes_answer(stack: RunningStack) -> None:
    user, other = await stack.create_user(credits=20), await stack.create_user(credits=0)
    pack_id = await finished_pack(stack, user)
    url = f"{stack.notifier}/v1/packs/{pack_id}/events"
    forged = await whole_stream(url, Authorization=f"Bearer {stack.key(user)[:-3]}AAA")
    assert forged[0] == 401 and forged[1]["www-authenticate"] == "Bearer"
    writer = make_named_key(stack.secret, user, new_key_id(), ["packs:write"])
    lacks = await whole_stream(url, Authorization=f"Bearer {writer}")
    assert lacks[0] == 403 and b"packs:read" in lacks[2]
    theirs = await whole_stream(url, Authorization=f"Bearer {stack.key(other)}")
    assert theirs[0] == 404 and theirs[2] == b'{"detail":"no such pack"}'
    missing = await whole_stream(url, Authorization="Basic dXNlcjpwYXNz")
    assert missing[0] == 401
    async with httpx.AsyncClient(timeout=30) as client:
        token = (await client.post(f"{stack.api}/v1/stream-tokens", headers=stack.auth(user))).json()["stream_token"]
    by_token = await first_bytes(f"{stack.notifier}/v1/events?token={token}")
    assert by_token[0] == 200 and pack_id.encode() in by_token[2]
