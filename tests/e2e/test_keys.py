"""Keys people can manage: named keys with scopes, per-key revocation (stream tokens die
with their key), revocation that fails closed across a restart, and secret rotation."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from services.cli import sse
from shared.auth import make_api_key, make_named_key, new_key_id, verify_api_key
from shared.events import KeyOldSecretUsed, NamedKeyCreated, NamedKeyRevoked
from tests.harness import RunningStack, flood_revocations, restart, run_cli

pytestmark = pytest.mark.e2e
PACK = {"product": {"name": "Steel bottle", "description": "750 ml"}}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def new_key(s: RunningStack, with_key: str, name: str, scopes: list[str]) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=30) as client:
        answer = await client.post(f"{s.api}/v1/keys", json={"name": name, "scopes": scopes}, headers=bearer(with_key))
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


async def finished_pack(s: RunningStack, key: str) -> dict[str, Any]:
    """A pack made with `key`: its 202 answer and its final snapshot."""
    async with httpx.AsyncClient(timeout=30) as client:
        accepted = await client.post(f"{s.api}/v1/packs", json=PACK, headers=bearer(key))
    assert accepted.status_code == 202, accepted.text
    events = [ev async for ev in sse.follow(f"{s.notifier}/v1/packs/{accepted.json()['pack_id']}/events", bearer(key), retries=3)]
    return {**accepted.json(), "final": events[-1].json()}


async def until(check: Any, timeout: float = 30) -> None:
    """Poll an async predicate (revocations travel through Kafka)."""
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


async def test_two_keys_of_a_user_one_revoked_the_other_works_and_scopes_hold(stack: RunningStack) -> None:
    user = await stack.create_user(credits=30)
    account = stack.key(user)
    one = await new_key(stack, account, "one", ["packs:write", "packs:read"])
    two = await new_key(stack, account, "two", ["packs:write", "packs:read"])
    reader = await new_key(stack, account, "reader", ["packs:read"])
    assert one["scopes"] == ["packs:write", "packs:read"] and not one["revoked"] and one["key"].startswith("pk_")
    pack = await finished_pack(stack, one["key"])
    pack_id, token = pack["pack_id"], pack["stream_token"]
    image_url = pack["final"]["images"][0]["url"]
    async with httpx.AsyncClient(timeout=30) as client:
        # A packs:read key: 403 naming the scope on writes, 200 on every read.
        refused = await client.post(f"{stack.api}/v1/packs", json=PACK, headers=bearer(reader["key"]))
        assert refused.status_code == 403 and refused.json()["detail"] == "API key lacks scope packs:write"
        assert (await client.get(f"{stack.notifier}/v1/packs/{pack_id}", headers=bearer(reader["key"]))).status_code == 200
        assert (await client.get(image_url, headers=bearer(reader["key"]))).status_code == 200
        events = await client.get(f"{stack.notifier}/v1/packs/{pack_id}/events", headers=bearer(reader["key"]))
        assert events.status_code == 200 and "event: pack" in events.text
        # ... and no key management, nor a scope it does not have to give.
        no_keys = await client.get(f"{stack.api}/v1/keys", headers=bearer(reader["key"]))
        assert no_keys.status_code == 403 and no_keys.json()["detail"] == "API key lacks scope keys"
        manager = await new_key(stack, account, "manager", ["keys", "packs:read"])
        wider = await client.post(f"{stack.api}/v1/keys", json={"name": "x", "scopes": ["packs:write"]},
                                  headers=bearer(manager["key"]))
        assert wider.status_code == 403 and wider.json()["detail"] == "API key lacks scope packs:write"
        ops = await client.post(f"{stack.api}/v1/keys", json={"name": "x", "scopes": ["ops"]}, headers=bearer(account))
        assert ops.status_code == 403 and "ops" in ops.json()["detail"]
        # The stream token minted by key one works while key one does.
        assert (await client.get(f"{stack.notifier}/v1/packs/{pack_id}?token={token}")).status_code == 200

        revoked = await client.delete(f"{stack.api}/v1/keys/{one['id']}", headers=bearer(manager["key"]))
        assert revoked.status_code == 200 and revoked.json()["revoked"] and revoked.json()["revoked_at"]

        async def refused_everywhere() -> bool:
            api = await client.post(f"{stack.api}/v1/packs", json=PACK, headers=bearer(one["key"]))
            snap = await client.get(f"{stack.notifier}/v1/packs/{pack_id}", headers=bearer(one["key"]))
            by_token = await client.get(f"{stack.notifier}/v1/packs/{pack_id}/events?token={token}")
            image = await client.get(image_url, headers=bearer(one["key"]))
            assert 202 not in (api.status_code,), "a revoked key submitted a pack"
            return {api.status_code, snap.status_code, by_token.status_code, image.status_code} == {401}

        await until(refused_everywhere)
        assert "revoked" in (await client.get(f"{stack.notifier}/v1/packs/{pack_id}?token={token}")).text
        # The other key of the same user still submits and streams; so does the account key.
        second = await finished_pack(stack, two["key"])
        assert second["final"]["status"] == "COMPLETED"
        assert (await client.get(f"{stack.notifier}/v1/packs/{second['pack_id']}?token={second['stream_token']}")).status_code == 200
        assert (await client.post(f"{stack.api}/v1/packs", json=PACK, headers=bearer(account))).status_code == 202
        # Revoking it again changes nothing; another user's key id is not found.
        again = await client.delete(f"{stack.api}/v1/keys/{one['id']}", headers=bearer(account))
        assert again.status_code == 200 and again.json()["revoked_at"] == revoked.json()["revoked_at"]
        other = await stack.create_user(credits=0)
        assert (await client.delete(f"{stack.api}/v1/keys/{two['id']}", headers=stack.auth(other))).status_code == 404
        by_name: dict[str, Any] = {}

        async def listed_with_use() -> bool:  # a first use is reported at once, through Kafka
            listed = (await client.get(f"{stack.api}/v1/keys", headers=bearer(manager["key"]))).json()["keys"]
            by_name.update({k["name"]: k for k in listed})
            return bool(by_name["one"]["last_used_at"] and by_name["two"]["last_used_at"])

        await until(listed_with_use)
    assert list(by_name) == ["one", "two", "reader", "manager"] and "key" not in by_name["two"]
    assert by_name["one"]["revoked"] and not by_name["two"]["revoked"]
    audit = await stack.decoded(stack.topics.ops_audit)
    assert {(type(e).__name__, e.key_id) for e in audit if isinstance(e, NamedKeyCreated | NamedKeyRevoked)} >= {
        ("NamedKeyCreated", one["id"]), ("NamedKeyRevoked", one["id"]), ("NamedKeyCreated", two["id"]),
    }


async def test_the_cli_manages_named_keys(stack: RunningStack) -> None:
    user = await stack.create_user(credits=5)
    made = await run_cli(stack, "accounts", "keys", "create", user, "--name", "ops box", "--scope", "ops",
                         "--scope", "packs:read", "--operator", "tester")
    key = made.stdout.strip().splitlines()[-1]
    claims = verify_api_key(stack.secret, key)
    assert claims.user_id == user and claims.scopes == {"ops", "packs:read"} and claims.key_id
    listed = await run_cli(stack, "accounts", "keys", "list", user)
    assert claims.key_id in listed.stdout and "ops box" in listed.stdout and "active" in listed.stdout
    async with httpx.AsyncClient(timeout=30) as client:
        refused = await client.post(f"{stack.api}/v1/packs", json=PACK, headers=bearer(key))
        assert refused.status_code == 403
        await run_cli(stack, "accounts", "keys", "revoke", claims.key_id, "--operator", "tester")

        async def refused_now() -> bool:
            return (await client.get(f"{stack.api}/v1/keys", headers=bearer(key))).status_code == 401

        await until(refused_now)
    assert "revoked" in (await run_cli(stack, "accounts", "keys", "list", user)).stdout


async def test_after_a_restart_a_revoked_key_gets_503_then_401_and_never_200(stack: RunningStack) -> None:
    """A long revocation feed, a key revoked, the api and the notifier restarted: from the
    moment their ports open, the revoked key (and a stream token it minted) gets 503 while
    they read the feed, then 401; a valid key is served as soon as the feed is read."""
    user = await stack.create_user(credits=20)
    account = stack.key(user)
    doomed = await new_key(stack, account, "doomed", ["packs:write", "packs:read"])
    valid = await new_key(stack, account, "valid", ["packs:write", "packs:read"])
    pack = await finished_pack(stack, doomed["key"])
    pack_id, token, image_url = pack["pack_id"], pack["stream_token"], pack["final"]["images"][0]["url"]
    await flood_revocations(stack, 200_000)  # enough for the catch-up to outlast the start, on a busy machine too
    async with httpx.AsyncClient(timeout=30) as client:
        assert (await client.delete(f"{stack.api}/v1/keys/{doomed['id']}", headers=bearer(account))).status_code == 200

        async def refused() -> bool:
            return (await client.get(f"{stack.notifier}/v1/packs/{pack_id}", headers=bearer(doomed["key"]))).status_code == 401

        await until(refused)
    restart(stack, "api", "notifier", wait=False)

    probes: dict[str, tuple[str, str, dict[str, str]]] = {
        "api POST /v1/packs": ("POST", f"{stack.api}/v1/packs", bearer(doomed["key"])),
        "api image": ("GET", image_url, bearer(doomed["key"])),
        "notifier snapshot": ("GET", f"{stack.notifier}/v1/packs/{pack_id}", bearer(doomed["key"])),
        "notifier events": ("GET", f"{stack.notifier}/v1/packs/{pack_id}/events", bearer(doomed["key"])),
        "notifier token": ("GET", f"{stack.notifier}/v1/packs/{pack_id}?token={token}", {}),
        "notifier all packs": ("GET", f"{stack.notifier}/v1/events", bearer(doomed["key"])),
    }
    valid_probes = {
        "api": ("GET", image_url, bearer(valid["key"])),
        "notifier": ("GET", f"{stack.notifier}/v1/packs/{pack_id}", bearer(valid["key"])),
        "api /healthz": ("GET", f"{stack.api}/healthz", {}),
        "notifier /healthz": ("GET", f"{stack.notifier}/healthz", {}),
    }
    seen: dict[str, list[tuple[float, int]]] = {name: [] for name in [*probes, *valid_probes]}
    t0 = time.monotonic()

    async def probe(client: httpx.AsyncClient, name: str, method: str, url: str, headers: dict[str, str]) -> None:
        while time.monotonic() - t0 < 120:
            try:
                answer = await client.request(method, url, headers=headers, json=PACK if method == "POST" else None)
            except httpx.TransportError:  # the port is not open yet
                await asyncio.sleep(0.01)
                continue
            seen[name].append((time.monotonic(), answer.status_code))
            if answer.status_code != 503:
                return
            await asyncio.sleep(0.01)

    async with httpx.AsyncClient(timeout=30) as client:
        await asyncio.gather(*(probe(client, name, *p) for name, p in [*probes.items(), *valid_probes.items()]))
    await asyncio.to_thread(stack.stack.wait_healthy, 60)
    for name, answers in seen.items():  # shown with -s, or on a failure
        print(f"{name}: {len(answers) - 1} x 503 over {answers[-1][0] - answers[0][0]:.2f} s, then {answers[-1][1]}")
    for name in probes:
        codes = [code for _, code in seen[name]]
        assert 200 not in codes and 202 not in codes, (name, codes)
        assert codes[-1] == 401 and set(codes[:-1]) <= {503}, (name, codes)
    for service in ("api", "notifier"):
        assert seen[f"{service} POST /v1/packs" if service == "api" else "notifier snapshot"][0][1] == 503, (
            f"{service} answered before reading the revocations: the catch-up window was not visible")
        for name in (service, f"{service} /healthz"):  # readiness says "starting" meanwhile
            codes = [code for _, code in seen[name]]
            assert codes[-1] == 200 and set(codes[:-1]) <= {503}, (name, codes)
    # The valid key is served as soon as the feed is read: within a moment of the revoked key's 401.
    for service, revoked_probe in (("api", "api image"), ("notifier", "notifier snapshot")):
        assert seen[service][-1][0] - seen[revoked_probe][-1][0] < 1.0, (service, seen[service][-3:], seen[revoked_probe][-3:])


@pytest.fixture
def rotating(stack: RunningStack) -> Iterator[RunningStack]:
    """The module's stack, its api and notifier given their first secret back afterwards."""
    try:
        yield stack
    finally:
        restart(stack, "api", "notifier", PACKLINE_SECRETS=stack.secret)


async def test_rotation_old_keys_work_while_listed_new_ones_throughout(rotating: RunningStack) -> None:
    """Kept last in the module: it restarts the shared api and notifier with other secrets."""
    s = rotating
    old, new = s.secret, "new-" + new_key_id()
    user = await s.create_user(credits=30)
    old_account = make_api_key(old, user)
    old_named = await new_key(s, old_account, "made under old", ["packs:write", "packs:read"])
    token_pack = await finished_pack(s, old_named["key"])
    old_token = token_pack["stream_token"]
    old_pack = (await s.post_pack(user)).json()["pack_id"]
    new_account = make_api_key(new, user)
    new_named = make_named_key(new, user, new_key_id(), ["packs:read"])

    async def statuses(*keys: str) -> list[int]:
        async with httpx.AsyncClient(timeout=30) as client:
            return [(await client.get(f"{s.notifier}/v1/packs/{old_pack}", headers=bearer(k))).status_code for k in keys] + [
                (await client.post(f"{s.api}/v1/packs", json=PACK, headers=bearer(k))).status_code
                for k in keys if "packs:write" in verify_api_key([old, new], k).scopes
            ]

    async def token_status() -> int:
        async with httpx.AsyncClient(timeout=30) as client:
            return (await client.get(f"{s.notifier}/v1/packs/{token_pack['pack_id']}?token={old_token}")).status_code

    # 1. The new secret added second: everything works; nothing is signed with it yet.
    restart(s, "api", "notifier", PACKLINE_SECRETS=f"{old},{new}")
    assert await statuses(old_account, old_named["key"], new_account, new_named) == [200] * 4 + [202] * 3
    assert verify_api_key(old, (await new_key(s, new_account, "still old", ["packs:read"]))["key"]).user_id == user
    # 2. The new secret first: it signs; the old keys still work, and are reported once per key and process.
    restart(s, "api", "notifier", PACKLINE_SECRETS=f"{new},{old}")
    for _ in range(2):
        assert await statuses(old_account, old_named["key"], new_account, new_named) == [200] * 4 + [202] * 3
    fresh = await new_key(s, new_account, "made under new", ["packs:read"])
    assert verify_api_key(new, fresh["key"]).key_id == fresh["id"]
    with pytest.raises(Exception, match="invalid"):
        verify_api_key(old, fresh["key"])
    assert await token_status() == 200

    old_reports: list[KeyOldSecretUsed] = []

    async def reported() -> bool:
        audit = [e for e in await s.decoded(s.topics.ops_audit) if isinstance(e, KeyOldSecretUsed)]
        old_reports[:] = [e for e in audit if e.key_id == old_named["id"]]
        return {e.service for e in old_reports} == {"api", "notifier"}

    await until(reported)
    assert len(old_reports) == 2 and all(e.secret_index == 1 and e.user_id == user for e in old_reports)
    # 3. The old secret dropped: its keys and tokens are dead, the new ones live on.
    restart(s, "api", "notifier", PACKLINE_SECRETS=new)
    assert await statuses(old_account, old_named["key"]) == [401, 401, 401, 401]
    assert await statuses(new_account, new_named, fresh["key"]) == [200, 200, 200, 202]
    assert await token_status() == 401
    assert s.stack.tail("api", 200).count("retiring secret") >= 1
