"""A seller's reads: their packs page by page, balance and statement, every delivered image
in one zip, images revalidated by ETag, and their live stream opened with a user stream
token (no Authorization header). Real broker, real processes; "detail" images always fail
for good here, so packs end PARTIAL or FAILED and are refunded."""

from __future__ import annotations

import asyncio
import io
import shutil
import tempfile
import time
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.api.reads import _zip
from services.cli import sse
from services.cli.proxy import Proxy, nginx_binary
from shared.devbroker import free_port
from shared.devs3 import S3Proxy, fetch_jars, have_jars
from shared.images import S3ImageStore, s3_client
from tests.harness import RunningStack, restart, run_cli

pytestmark = pytest.mark.e2e
MAIN = {"product": {"name": "Steel bottle", "description": "750 ml"}, "images": ["main"]}
DETAIL = {"product": {"name": "Steel bottle", "description": "750 ml"}, "images": ["detail"]}
BOTH = {"product": {"name": "Steel bottle", "description": "750 ml"}, "images": ["main", "detail"]}


@pytest.fixture(scope="module")
def seller(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    with RunningStack.started(kafka_bootstrap, tmp_path_factory.mktemp("seller"), LOCAL_IMAGE_PERMANENT_FAIL_KINDS="detail") as s:
        yield s


async def get(url: str, headers: dict[str, str] | None = None, **params: Any) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as client:
        return await client.get(url, headers=headers, params=params)


async def until(check: Any, timeout: float = 60) -> Any:
    """Poll an async function until it returns something true (things travel through Kafka)."""
    deadline = time.monotonic() + timeout
    while not (found := await check()):
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.2)
    return found


async def finished(s: RunningStack, user: str, body: dict[str, Any]) -> dict[str, Any]:
    """Post a pack, follow it to its end: its final snapshot."""
    accepted = await s.post_pack(user, body)
    assert accepted.status_code == 202, accepted.text
    return dict((await s.events(accepted.json()["pack_id"], user))[-1].json())


async def listing(s: RunningStack, user: str, **params: Any) -> list[dict[str, Any]]:
    """Every page of the user's packs, checking each page's size and cursor."""
    packs: list[dict[str, Any]] = []
    while True:
        answer = await get(f"{s.notifier}/v1/packs", s.auth(user), **params)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        packs += body["packs"]
        if body["next_cursor"] is None:
            return packs
        assert len(body["packs"]) == params.get("limit", 20)
        params = {**params, "cursor": body["next_cursor"]}


async def test_my_packs_newest_first_in_pages_filtered_and_only_mine(seller: RunningStack) -> None:
    s = seller
    me, other = await s.create_user(credits=50), await s.create_user(credits=50)
    posted, took = [], []
    for body in (MAIN, DETAIL, MAIN, MAIN, DETAIL, MAIN, MAIN):
        answer = await s.post_pack(me, body)
        assert answer.status_code == 202, answer.text
        posted.append(answer.json()["pack_id"])
        # A pack whose 202 came before the listing is in it (read your writes), at once:
        # from memory, before any write to the read model.
        started = time.monotonic()
        assert await _is_first(s, me, posted[-1])
        took.append(time.monotonic() - started)
    print(f"listing right after a 202: first {took[0]:.3f} s, then median {sorted(took[1:])[3]:.3f} s")
    theirs = [(await s.post_pack(other, MAIN)).json()["pack_id"] for _ in range(2)]
    for pack_id in posted:
        await s.events(pack_id, me)

    async def pages_of_three() -> list[list[str]]:
        pages, cursor = [], None
        while True:
            answer = await get(f"{s.notifier}/v1/packs", s.auth(me), limit=3, **({"cursor": cursor} if cursor else {}))
            assert answer.status_code == 200, answer.text
            pages.append([p["pack_id"] for p in answer.json()["packs"]])
            if (cursor := answer.json()["next_cursor"]) is None:
                return pages

    pages = await pages_of_three()
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [p for page in pages for p in page] == posted[::-1]  # newest first, every pack once
    everything = await listing(s, me, limit=3)
    assert all(p["user_id"] == me for p in everything) and not set(theirs) & {p["pack_id"] for p in everything}
    assert [p["created_at"] for p in everything] == sorted((p["created_at"] for p in everything), reverse=True)
    failed = await listing(s, me, status="FAILED", limit=1)
    assert [p["pack_id"] for p in failed] == [posted[4], posted[1]]
    assert {p["status"] for p in await listing(s, me, status="COMPLETED")} == {"COMPLETED"}
    assert [p["pack_id"] for p in await listing(s, other)] == theirs[::-1]

    bad = await get(f"{s.notifier}/v1/packs", s.auth(me), cursor="not-a-cursor")
    assert bad.status_code == 400 and "cursor" in bad.json()["detail"]
    wrong = await get(f"{s.notifier}/v1/packs", s.auth(me), status="DONE")
    assert wrong.status_code == 422 and "COMPLETED" in wrong.json()["detail"][0]["msg"]
    for limit in (0, 101):
        assert (await get(f"{s.notifier}/v1/packs", s.auth(me), limit=limit)).status_code == 422
    assert (await get(f"{s.notifier}/v1/packs")).status_code == 401

    # After a restart the finished packs come from the read model: the same pages.
    restart(s, "notifier")
    assert await pages_of_three() == pages
    out = await run_cli(s, "packs", "list", "--user", me, "--limit", "3", "--all")
    assert [line.split()[0] for line in out.stdout.splitlines()] == posted[::-1]
    out = await run_cli(s, "packs", "list", "--user", me, "--status", "FAILED")
    assert [line.split()[0] for line in out.stdout.splitlines()] == [posted[4], posted[1]]


async def _is_first(s: RunningStack, user: str, pack_id: str) -> bool:
    packs = (await get(f"{s.notifier}/v1/packs", s.auth(user), limit=1)).json()["packs"]
    return bool(packs) and packs[0]["pack_id"] == pack_id


async def test_statement_adds_up_to_the_balance_with_debits_and_refunds(seller: RunningStack) -> None:
    s = seller
    user = await s.create_user(credits=20)
    partial = await finished(s, user, BOTH)
    failed = await finished(s, user, DETAIL)
    assert partial["status"] == "PARTIAL" and failed["status"] == "FAILED"
    expected = await s.balance(user)
    assert expected == 20 - 2 + 1 - 1 + 1

    async def balance() -> int | None:
        answer = await get(f"{s.notifier}/v1/balance", s.auth(user))
        return answer.json()["balance"] if answer.status_code == 200 and answer.json()["balance"] == expected else None

    await until(balance)
    entries, cursor = [], None
    while True:
        answer = await get(f"{s.notifier}/v1/ledger", s.auth(user), limit=2, **({"cursor": cursor} if cursor else {}))
        assert answer.status_code == 200, answer.text
        entries += answer.json()["entries"]
        if (cursor := answer.json()["next_cursor"]) is None:
            break
    oldest_first = entries[::-1]
    assert [(e["kind"], e["amount"]) for e in oldest_first] == [
        ("grant", 20), ("debit", -2), ("refund", 1), ("debit", -1), ("refund", 1)]
    assert sum(e["amount"] for e in entries) == expected == entries[0]["balance"]
    assert [e["pack_id"] for e in oldest_first[1:]] == [partial["pack_id"]] * 2 + [failed["pack_id"]] * 2
    assert oldest_first[2]["image_id"] == "detail" and oldest_first[0]["pack_id"] is None
    running = 0
    for e in oldest_first:
        running += e["amount"]
        assert e["balance"] == running and e["at"]

    nobody = await get(f"{s.notifier}/v1/balance", s.auth("u-nobody"))
    assert nobody.status_code == 404 and "no account" in nobody.json()["detail"]
    assert (await get(f"{s.notifier}/v1/ledger", s.auth("u-nobody"))).json() == {"entries": [], "next_cursor": None}
    bad = await get(f"{s.notifier}/v1/ledger", s.auth(user), cursor="xyz")
    assert bad.status_code == 400 and "cursor" in bad.json()["detail"]
    out = await run_cli(s, "credits", "statement", "--user", user, "--limit", "2", "--all")
    lines = out.stdout.splitlines()
    assert lines[0] == f"balance {expected}"
    assert [line.split()[1] for line in lines[1:]] == ["refund", "debit", "refund", "debit", "grant"]


async def test_zip_holds_the_delivered_images_and_images_revalidate(seller: RunningStack) -> None:
    s = seller
    user, other = await s.create_user(credits=20), await s.create_user(credits=20)
    pack = await finished(s, user, {**BOTH, "images": ["main", "lifestyle", "detail"]})
    assert pack["status"] == "PARTIAL"
    delivered = {i["image_id"]: i["url"] for i in pack["images"] if i["status"] == "COMPLETED"}
    assert set(delivered) == {"main", "lifestyle"}
    served = {}
    for image_id, url in delivered.items():
        answer = await get(url, s.auth(user))
        assert answer.status_code == 200 and answer.headers["cache-control"].startswith("private, max-age=")
        etag = answer.headers["etag"]
        assert etag.startswith('"') and etag.endswith('"')
        served[f"{image_id}.png"] = answer.content
        again = await get(url, {**s.auth(user), "If-None-Match": etag})
        assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag
        assert (await get(url, {**s.auth(user), "If-None-Match": '"other"'})).status_code == 200
        assert (await get(url, {**s.auth(other), "If-None-Match": etag})).status_code == 404

    zipped = await get(f"{s.api}/v1/packs/{pack['pack_id']}/images.zip", s.auth(user))
    assert zipped.status_code == 200 and zipped.headers["content-type"] == "application/zip"
    assert "attachment" in zipped.headers["content-disposition"]
    with zipfile.ZipFile(io.BytesIO(zipped.content)) as archive:
        assert archive.testzip() is None
        assert {name: archive.read(name) for name in archive.namelist()} == served
    assert (await get(f"{s.api}/v1/packs/{pack['pack_id']}/images.zip", s.auth(other))).status_code == 404
    assert (await get(f"{s.api}/v1/packs/{pack['pack_id']}/images.zip")).status_code == 401
    missing = await get(f"{s.api}/v1/packs/00000000-0000-0000-0000-000000000000/images.zip", s.auth(user))
    assert missing.status_code == 404 and missing.json()["detail"]


async def test_a_user_stream_token_opens_the_user_stream_without_a_header(seller: RunningStack) -> None:
    s = seller
    user = await s.create_user(credits=20)
    first = await finished(s, user, MAIN)
    async with httpx.AsyncClient(timeout=30) as client:
        minted = await client.post(f"{s.api}/v1/stream-tokens", headers=s.auth(user))
        assert minted.status_code == 201, minted.text
        body = minted.json()
        assert body["expires_at"] > time.time() and body["events_url"].endswith(body["stream_token"])
        assert body["events_url"].startswith(f"{s.env['NOTIFIER_PUBLIC_URL']}/v1/events?token=")
        assert (await client.post(f"{s.api}/v1/stream-tokens")).status_code == 401
        # A pack's token is not a user token, nor the reverse.
        pack = (await s.post_pack(user, MAIN)).json()
        assert (await client.get(f"{s.notifier}/v1/events", params={"token": pack["stream_token"]})).status_code == 401
        assert (await client.get(f"{s.notifier}/v1/packs/{pack['pack_id']}",
                                 params={"token": body["stream_token"]})).status_code == 401
        forged = body["stream_token"][:-2] + ("AA" if not body["stream_token"].endswith("AA") else "BB")
        assert (await client.get(f"{s.notifier}/v1/events", params={"token": forged})).status_code == 401

    seen: dict[str, str] = {}

    async def follow() -> None:
        async for ev in sse.follow(body["events_url"], {}, retries=3):
            if ev.event == "pack":
                data = ev.json()
                assert data["user_id"] == user
                seen[data["pack_id"]] = data["status"]
                if seen.get(pack["pack_id"]) == "COMPLETED":
                    return

    await asyncio.wait_for(follow(), 90)
    assert first["pack_id"] in seen

    # Revoking the key that minted it ends the token.
    account = s.key(user)
    async with httpx.AsyncClient(timeout=30) as client:
        named = (await client.post(f"{s.api}/v1/keys", json={"name": "r", "scopes": ["packs:read", "keys"]},
                                   headers={"Authorization": f"Bearer {account}"})).json()
        token = (await client.post(f"{s.api}/v1/stream-tokens", headers={"Authorization": f"Bearer {named['key']}"})).json()
        revoked = await client.delete(f"{s.api}/v1/keys/{named['id']}", headers={"Authorization": f"Bearer {account}"})
        assert revoked.status_code == 200

        async def refused() -> bool:
            async with client.stream("GET", f"{s.notifier}/v1/events", params={"token": token["stream_token"]}) as answer:
                return answer.status_code == 401 and "revoked" in (await answer.aread()).decode()

        await until(refused, 30)


async def test_the_s3_store_lists_finished_images_and_tags_them() -> None:
    if not have_jars():
        fetch_jars()
    data_dir = Path(tempfile.mkdtemp(prefix="packline-s3-"))
    server = S3Proxy(data_dir)
    server.start()
    try:
        server.make_bucket("seller")
        client = s3_client(server.endpoint, server.region, server.access_key, server.secret_key)
        store = S3ImageStore(client, "seller", "p/x", "http://api")
        pack = str(uuid.uuid4())
        assert await store.delivered(pack) == [] and await store.owner(pack) is None
        await store.save(pack, "main", "alice", b"main bytes" * 500, 1)
        await store.save(pack, "detail", "alice", b"detail bytes", 1)
        await store.put_claim(pack, "lifestyle", b"{}")  # being made: not delivered
        assert await store.delivered(pack) == ["detail", "main"] and await store.owner(pack) == "alice"
        image = await store.open_owned(pack, "main", "alice")
        assert image is not None and image.etag.startswith('"')
        image.release()
        await store.save(pack, "main", "alice", b"made again", 2)
        again = await store.open_owned(pack, "main", "alice")
        assert again is not None and again.etag != image.etag
        again.release()
        body = b"".join([chunk async for chunk in _zip(store, pack, "alice", await store.delivered(pack))])
        with zipfile.ZipFile(io.BytesIO(body)) as archive:
            assert {n: archive.read(n) for n in archive.namelist()} == {"main.png": b"made again", "detail.png": b"detail bytes"}
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


async def test_behind_the_proxy_each_read_reaches_its_service(seller: RunningStack, tmp_path: Path) -> None:
    """nginx (deploy/nginx/) sends GET /v1/packs, /v1/balance and /v1/ledger to the notifier,
    POST /v1/packs and the zip to the api."""
    s = seller
    assert nginx_binary() is not None, "nginx is needed (apt-get install -y nginx)"
    proxy = Proxy(tmp_path / "nginx", tmp_path / "logs", free_port(), [s.stack.port("api")], [s.stack.port("notifier")])
    proxy.start()
    try:
        proxy.wait_ready()
        user = await s.create_user(credits=5)
        async with httpx.AsyncClient(timeout=30, headers=s.auth(user)) as client:
            accepted = await client.post(f"{proxy.url}/v1/packs", json=MAIN)
            assert accepted.status_code == 202, accepted.text
            pack_id = accepted.json()["pack_id"]
            await s.events(pack_id, user)
            listed = (await client.get(f"{proxy.url}/v1/packs")).json()
            assert [p["pack_id"] for p in listed["packs"]] == [pack_id]
            await until(lambda: _balance_is(client, f"{proxy.url}/v1/balance", 4))
            entries = (await client.get(f"{proxy.url}/v1/ledger")).json()["entries"]
            assert [e["kind"] for e in entries] == ["debit", "grant"]
            zipped = await client.get(f"{proxy.url}/v1/packs/{pack_id}/images.zip")
            assert zipped.status_code == 200 and zipfile.ZipFile(io.BytesIO(zipped.content)).namelist() == ["main.png"]
            assert (await client.delete(f"{proxy.url}/v1/balance")).status_code in (403, 405)
    finally:
        proxy.stop()


async def _balance_is(client: httpx.AsyncClient, url: str, expected: int) -> bool:
    answer = await client.get(url)
    return answer.status_code == 200 and answer.json()["balance"] == expected
