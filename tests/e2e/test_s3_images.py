"""Images on S3-compatible storage (IMAGE_STORE=s3://bucket/prefix), against a real S3 server:
s3proxy from Maven Central jars (shared/devs3.py), storing its buckets in a temporary directory.

The store keeps the local layout, the api serves the objects' bytes, and the claims that keep
a rebalance from paying the provider twice work through the bucket."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services.generation.claims import CLAIM_STALE_S, Claims
from shared.devs3 import S3Proxy, fetch_jars, have_jars
from shared.images import S3ImageStore, s3_client
from tests.fake_images_api import FakeImagesApi
from tests.harness import RunningStack, rebalance_mid_generation

pytestmark = pytest.mark.e2e
BUCKET = "packline-test"
PACK = "0b6e4d8e-5f2a-4c1e-9d3b-2a7f6c5e4d3c"


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Proxy]:
    if not have_jars():
        fetch_jars()  # as `make s3proxy-jars` does
    data_dir = Path(tempfile.mkdtemp(prefix="packline-s3-"))
    server = S3Proxy(data_dir)
    server.start()
    try:
        server.make_bucket(BUCKET)
        yield server
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def store_on(server: S3Proxy, prefix: str) -> S3ImageStore:
    client = s3_client(server.endpoint, server.region, server.access_key, server.secret_key)
    return S3ImageStore(client, BUCKET, prefix, "http://api")


def s3_env(server: S3Proxy, prefix: str) -> dict[str, str]:
    return {**server.env(), "IMAGE_STORE": f"s3://{BUCKET}/{prefix}"}


def object_keys(store: S3ImageStore) -> list[str]:
    listed = store.client.list_objects_v2(Bucket=BUCKET, Prefix=store.prefix + "/")
    return sorted(o["Key"] for o in listed.get("Contents", []) if not o["Key"].endswith("/"))  # s3proxy lists directories too


async def test_the_s3_store_keeps_the_layout_the_owner_check_and_claims(s3: S3Proxy) -> None:
    store = store_on(s3, f"unit-{uuid.uuid4().hex[:6]}")
    assert await store.finished(PACK, "main") is None
    data = bytes(range(256)) * 1000
    await store.save(PACK, "main", "alice", data, attempt=3)
    assert await store.finished(PACK, "main") == 3
    assert object_keys(store) == [f"{store.prefix}/{PACK}/{name}" for name in ("main.json", "main.png", "meta.json")]
    image = await store.open_owned(PACK, "main", "alice")
    assert image is not None and (image.content_type, image.length) == ("image/png", len(data))
    assert b"".join([chunk async for chunk in image.chunks]) == data
    assert await store.open_owned(PACK, "main", "mallory") is None
    assert await store.open_owned(PACK, "detail", "alice") is None

    now = [1_000_000.0]
    a, b = Claims(store, "A", lambda: now[0]), Claims(store, "B", lambda: now[0])
    await a.claim(PACK, "detail")
    assert await b.held_by_other(PACK, "detail") and not await a.held_by_other(PACK, "detail")
    now[0] += CLAIM_STALE_S + 1
    assert not await b.held_by_other(PACK, "detail")  # A stopped refreshing it
    await a.refresh(PACK, "detail")
    assert await b.held_by_other(PACK, "detail")
    await a.release(PACK, "detail")
    assert not await b.held_by_other(PACK, "detail")
    assert not [k for k in object_keys(store) if k.endswith(".claim")]


async def test_a_pack_on_s3_is_served_by_the_api(s3: S3Proxy, kafka_bootstrap: str, tmp_path: Path) -> None:
    prefix = f"stack-{uuid.uuid4().hex[:6]}"
    store = store_on(s3, prefix)
    with RunningStack.started(kafka_bootstrap, tmp_path, **s3_env(s3, prefix)) as s:
        user = await s.create_user(credits=10)
        pack_id = (await s.post_pack(user)).json()["pack_id"]
        final = (await s.events(pack_id, user))[-1].json()
        assert final["status"] == "COMPLETED" and final["charged"] == 6, final
        async with httpx.AsyncClient(timeout=30) as client:
            for img in final["images"]:
                image_id = img["image_id"]
                assert img["url"] == f"{s.api}/v1/images/{pack_id}/{image_id}"  # the api's URL, not the bucket's
                served = await client.get(img["url"], headers=s.auth(user))
                assert served.status_code == 200 and served.headers["content-type"] == "image/png"
                stored = s3_object(store, pack_id, f"{image_id}.png")
                assert served.content == stored and stored.startswith(b"\x89PNG\r\n\x1a\n")
                assert int(served.headers["content-length"]) == len(stored)
                assert (await client.get(img["url"], headers=s.auth("someone-else"))).status_code == 404
            missing = await client.get(f"{s.api}/v1/images/{pack_id}/not-made", headers=s.auth(user))
            assert missing.status_code == 404
        assert not (tmp_path / "images").exists(), "an image went to the local directory"


def s3_object(store: S3ImageStore, pack_id: str, name: str) -> bytes:
    return store.client.get_object(Bucket=BUCKET, Key=store.key(pack_id, name))["Body"].read()


async def test_jobs_moved_by_a_rebalance_mid_generation_are_not_paid_twice_on_s3(
    s3: S3Proxy, kafka_bootstrap: str, tmp_path: Path,
) -> None:
    """As in test_commit_safety.py, with the images and the claims in the bucket."""
    prefix = f"rebalance-{uuid.uuid4().hex[:6]}"
    store = store_on(s3, prefix)
    with FakeImagesApi.running() as fake, RunningStack.started(
        kafka_bootstrap, tmp_path, services=("credits", "generation-1", "generation-2", "api", "notifier"),
        IMAGE_BACKEND="openai", OPENAI_API_KEY="test-key", OPENAI_BASE_URL=fake.base_url, **s3_env(s3, prefix),
    ) as s:
        await rebalance_mid_generation(s, fake)
        deadline = time.monotonic() + 10  # released just after the image's result is published
        while left := [k for k in await asyncio.to_thread(object_keys, store) if k.endswith(".claim")]:
            assert time.monotonic() < deadline, f"claims outlived their images: {[s3_object(store, *k.split('/')[1:]) for k in left]}"
            await asyncio.sleep(0.5)
        keys = await asyncio.to_thread(object_keys, store)
        assert sum(k.endswith(".png") for k in keys) == 60
        assert not (tmp_path / "images").exists()
