"""The notifier's stream fast path decides in memory, with the real store, keyring and
revocations: an ordinary request is streamed by it, every other goes to the app (whose
routes answer as before: tests/e2e/test_stream_fast_path.py)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from services.notifier.consumer import StatusFeed
from services.notifier.fastpath import StreamFastPath
from services.notifier.sse import Hub
from services.notifier.state import Store
from shared.auth import Keyring, make_api_key, make_named_key, new_key_id
from shared.events import ImageEntry, PackStatus
from shared.http import KeyCheck
from shared.kafka import KafkaConfig
from shared.revocations import Revocations

SECRET = "s3cret"
PACK, UNSEEN = "6f1c9d2e-0b4a-4f7e-9c3d-2a1b0c9d8e7f", "0d9e8f7a-6b5c-4d3e-8f2a-1b0c9d8e7f6a"
PACK_ROUTE, USER_ROUTE = object(), object()


def state(ready: bool = True) -> SimpleNamespace:
    store = Store(history_limit=10)
    store.apply(PackStatus(event_id="1", pack_id=PACK, user_id="alice", status="PROCESSING", cost=1,
                           images=[ImageEntry(image_id="main", kind="main")]))
    feed = StatusFeed(KafkaConfig("127.0.0.1:1"), "packs.status", store)
    revocations = Revocations(KafkaConfig("127.0.0.1:1"), "auth.revocations")
    if ready:
        feed.ready.set()
        revocations.ready.set()
    return SimpleNamespace(feed=feed, keys=KeyCheck(Keyring((SECRET,)), revocations), hub=Hub(15))


async def serve(path: str, headers: dict[str, str], method: str = "GET", query: str = "",
                ready: bool = True) -> tuple[bool, list[dict[str, Any]], dict[str, Any]]:
    """(went to the app, what was sent, the scope) for one request, the client leaving at once."""
    app_called = False

    async def app(_scope: Any, _receive: Any, _send: Any) -> None:
        nonlocal app_called
        app_called = True

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(0.05)
        return {"type": "http.disconnect"}

    scope = {"type": "http", "method": method, "path": path, "query_string": query.encode(),
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
             "app": SimpleNamespace(state=state(ready))}
    await asyncio.wait_for(StreamFastPath(app, PACK_ROUTE, USER_ROUTE)(scope, receive, send), 5)
    return app_called, sent, scope


def bearer(user: str = "alice", scopes: tuple[str, ...] | None = None) -> dict[str, str]:
    key = make_api_key(SECRET, user) if scopes is None else make_named_key(SECRET, user, new_key_id(), scopes)
    return {"Authorization": f"Bearer {key}"}


async def test_an_ordinary_pack_stream_is_served_by_the_fast_path() -> None:
    to_app, sent, scope = await serve(f"/v1/packs/{PACK}/events", {**bearer(), "Last-Event-ID": "0"})
    assert not to_app and scope["route"] is PACK_ROUTE
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 200
    assert (b"content-type", b"text/event-stream; charset=utf-8") in sent[0]["headers"]
    assert sent[1]["body"].startswith(b"id: 1\r\nevent: pack\r\n")


async def test_an_ordinary_user_stream_is_served_by_the_fast_path() -> None:
    to_app, sent, scope = await serve("/v1/events", bearer(), query="last_event_id=")
    assert not to_app and scope["route"] is USER_ROUTE and sent[0]["status"] == 200
    assert PACK.encode() in sent[1]["body"]


@pytest.mark.parametrize(("why", "path", "headers", "query"), [
    ("an Origin: CORS to answer", f"/v1/packs/{PACK}/events", {**bearer(), "Origin": "http://shop"}, ""),
    ("a stream token", f"/v1/packs/{PACK}/events", {}, "token=abc"),
    ("a user stream token", "/v1/events", {}, "token=abc"),
    ("another query parameter", f"/v1/packs/{PACK}/events", bearer(), "x=1"),
    ("a forged key", f"/v1/packs/{PACK}/events", {"Authorization": bearer()["Authorization"][:-3] + "AAA"}, ""),
    ("no Bearer key", f"/v1/packs/{PACK}/events", {"Authorization": "Basic dXNlcjpwYXNz"}, ""),
    ("a key without packs:read", f"/v1/packs/{PACK}/events", bearer(scopes=("packs:write",)), ""),
    ("another user's pack", f"/v1/packs/{PACK}/events", bearer("mallory"), ""),
    ("a pack not seen yet", f"/v1/packs/{UNSEEN}/events", bearer(), ""),
    ("not a stream", f"/v1/packs/{PACK}", bearer(), ""),
    ("a longer path", f"/v1/packs/{PACK}/x/events", bearer(), ""),
    ("an empty pack id", "/v1/packs//events", bearer(), ""),
], ids=lambda v: v if isinstance(v, str) and " " in v else "")
async def test_anything_else_goes_to_the_app(why: str, path: str, headers: dict[str, str], query: str) -> None:
    to_app, sent, _ = await serve(path, headers, query=query)
    assert to_app and not sent, why


async def test_a_head_request_and_a_notifier_still_catching_up_go_to_the_app() -> None:
    assert (await serve(f"/v1/packs/{PACK}/events", bearer(), method="HEAD"))[0]
    assert (await serve(f"/v1/packs/{PACK}/events", bearer(), ready=False))[0]
