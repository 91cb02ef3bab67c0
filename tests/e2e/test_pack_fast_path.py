"""`POST /v1/packs` is answered by the api's fast path (services/api/packs.py) for an
ordinary request and by the FastAPI route for everything else: both must keep the
contract alike (the answer, idempotency, scopes, errors, the request metric)."""

from __future__ import annotations

import json

import httpx
import pytest

from shared.auth import make_named_key, new_key_id
from tests.harness import RunningStack

pytestmark = pytest.mark.e2e
PACK = {"product": {"name": "Steel bottle", "description": "750 ml"}, "images": ["main", "detail"]}
# FastAPI reads any `+json` type as JSON; the fast path takes only application/json, so this goes to the route.
ROUTE_ONLY = "application/x.packline+json"


async def post(s: RunningStack, key: str, body: object, content_type: str = "application/json", **headers: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as client:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return await client.post(f"{s.api}/v1/packs", content=content,
                                 headers={"Authorization": f"Bearer {key}", "Content-Type": content_type, **headers})


async def test_the_fast_path_and_the_route_answer_alike(stack: RunningStack) -> None:
    user = await stack.create_user(credits=50)
    key = stack.key(user)
    fast = await post(stack, key, PACK, **{"Idempotency-Key": "fast-1"})
    routed = await post(stack, key, PACK, ROUTE_ONLY, **{"Idempotency-Key": "route-1"})
    assert fast.status_code == routed.status_code == 202, (fast.text, routed.text)
    assert fast.headers["content-type"] == routed.headers["content-type"] == "application/json"
    a, b = fast.json(), routed.json()
    assert list(a) == list(b) == ["pack_id", "status", "cost", "status_url", "stream_url", "stream_token"]
    assert (a["status"], a["cost"]) == (b["status"], b["cost"]) == ("DRAFT", 2) and a["pack_id"] != b["pack_id"]
    # An Idempotency-Key used on one path holds on the other.
    again = await post(stack, key, PACK, ROUTE_ONLY, **{"Idempotency-Key": "fast-1"})
    assert again.status_code == 202 and again.json()["pack_id"] == a["pack_id"]
    other = {**PACK, "images": ["main"]}
    for content_type in ("application/json", ROUTE_ONLY):
        clash = await post(stack, key, other, content_type, **{"Idempotency-Key": "route-1"})
        assert clash.status_code == 409, clash.text
        assert clash.json() == {"detail": "this Idempotency-Key was already used with a different request body"}
    seen = await stack.metric("api", "packline_http_request_duration_seconds_count")
    assert any('route="/v1/packs"' in labels and 'status="202"' in labels and value >= 3 for labels, value in seen), seen


async def test_what_the_fast_path_does_not_take_gets_the_routes_answer(stack: RunningStack) -> None:
    user = await stack.create_user(credits=10)
    key = stack.key(user)
    reader = make_named_key(stack.secret, user, new_key_id(), ["packs:read"])
    lacks = await post(stack, reader, PACK)
    assert lacks.status_code == 403 and lacks.json() == {"detail": "API key lacks scope packs:write"}
    forged = await post(stack, key[:-3] + "AAA", PACK)
    assert forged.status_code == 401 and forged.headers["www-authenticate"] == "Bearer"
    strict = await post(stack, key, {**PACK, "aplus": 0})
    assert strict.status_code == 422 and strict.json()["detail"][0]["loc"][:2] == ["body", "aplus"], strict.text
    bad_key = await post(stack, key, PACK, **{"Idempotency-Key": "x" * 201})
    assert bad_key.status_code == 422 and bad_key.json()["detail"][0]["loc"] == ["header", "idempotency-key"], bad_key.text
    broken = await post(stack, key, b'{"product": ')
    assert broken.status_code == 422 and broken.json()["detail"][0]["type"] == "json_invalid", broken.text
