"""The local image store (shared/images.py): the layout both stores share, the owner check
and the IMAGE_STORE setting. The S3 store runs the same checks against s3proxy in
tests/e2e/test_s3_images.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from shared.images import INLINE_BYTES, ImageStore, LocalImageStore, S3ImageStore, open_image_store, parse_s3_url
from shared.settings import CommonSettings

PACK = "0b6e4d8e-5f2a-4c1e-9d3b-2a7f6c5e4d3c"


async def read_all(store: ImageStore, image_id: str, user: str) -> bytes | None:
    image = await store.open_owned(PACK, image_id, user)
    return None if image is None else b"".join([chunk async for chunk in image.chunks])


@pytest.mark.parametrize("inline_bytes", [INLINE_BYTES, 0], ids=["small files on the loop", "all in threads"])
async def test_saved_image_layout_and_owner_check(tmp_path: Path, inline_bytes: int) -> None:
    store = LocalImageStore(tmp_path, "http://api/", inline_bytes)
    assert await store.finished(PACK, "main") is None
    data = bytes(range(256)) * 1000  # several chunks
    await store.save(PACK, "main", "alice", data, attempt=2)
    assert await store.finished(PACK, "main") == 2
    assert (tmp_path / PACK / "main.png").read_bytes() == data
    assert json.loads((tmp_path / PACK / "main.json").read_text()) == {"attempt": 2}
    assert json.loads((tmp_path / PACK / "meta.json").read_text())["user_id"] == "alice"
    image = await store.open_owned(PACK, "main", "alice")
    assert image is not None and image.content_type == "image/png" and image.length == len(data)
    assert b"".join([chunk async for chunk in image.chunks]) == data
    assert await read_all(store, "main", "mallory") is None  # someone else's image is a missing one
    assert await read_all(store, "lifestyle", "alice") is None
    assert await read_all(store, "../etc", "alice") is None
    assert store.url(PACK, "main") == f"http://api/v1/images/{PACK}/main"
    with pytest.raises(ValueError):
        await store.finished("../x", "main")


async def test_the_first_owner_stays(tmp_path: Path) -> None:
    store = LocalImageStore(tmp_path, "http://api")
    await store.save(PACK, "main", "alice", b"a", 1)
    await store.save(PACK, "lifestyle", "bob", b"b", 1)
    assert await read_all(store, "lifestyle", "alice") == b"b"
    assert await read_all(store, "lifestyle", "bob") is None
    other = LocalImageStore(tmp_path, "http://api")  # another process: it has not seen the owner yet
    await other.save(PACK, "detail", "bob", b"d", 1)
    assert await other.owner(PACK) == "alice"


async def test_a_claim_is_released_with_the_save_of_its_image(tmp_path: Path) -> None:
    store = LocalImageStore(tmp_path, "http://api")
    await store.put_claim(PACK, "main", b'{"owner": "A"}')
    await store.put_claim(PACK, "detail", b'{"owner": "A"}')
    await store.save(PACK, "main", "alice", b"png", 2, release_claim=True)
    assert await store.get_claim(PACK, "main") is None and await store.finished(PACK, "main") == 2
    await store.save(PACK, "detail", "alice", b"png", 1)
    assert await store.get_claim(PACK, "detail") == b'{"owner": "A"}'  # not asked to
    names = sorted(p.name for p in (tmp_path / PACK).iterdir())
    assert names == [".detail.claim", "detail.json", "detail.png", "main.json", "main.png", "meta.json"]  # no temporaries


@pytest.mark.parametrize("inline_bytes", [INLINE_BYTES, 0], ids=["small files on the loop", "all in threads"])
async def test_a_claim_of_the_saved_attempt_becomes_its_marker(tmp_path: Path, inline_bytes: int) -> None:
    """On a directory the claim is renamed into the marker when it names the attempt saved;
    any other claim (another attempt, an answered one, garbage) is deleted and the marker
    written, so what `finished` reads is always the attempt that made the image."""
    store = LocalImageStore(tmp_path, "http://api", inline_bytes)
    mine = {"owner": "A", "refreshed_at": 1.0, "run": 0, "attempt": 2}
    await store.put_claim(PACK, "main", json.dumps(mine).encode())
    await store.save(PACK, "main", "alice", b"png", 2, release_claim=True)
    assert json.loads((tmp_path / PACK / "main.json").read_text()) == mine  # the claim itself, renamed
    assert await store.finished(PACK, "main") == 2 and await store.get_claim(PACK, "main") is None
    others = {"detail": {**mine, "attempt": 1}, "scale": {**mine, "answered": True}, "lifestyle": "not json{"}
    for image_id, claim in others.items():
        await store.put_claim(PACK, image_id, claim.encode() if isinstance(claim, str) else json.dumps(claim).encode())
        await store.save(PACK, image_id, "alice", b"png", 2, release_claim=True)
        assert json.loads((tmp_path / PACK / f"{image_id}.json").read_text()) == {"attempt": 2}, image_id
        assert await store.get_claim(PACK, image_id) is None
    assert not [p.name for p in (tmp_path / PACK).iterdir() if p.name.endswith((".tmp", ".claim"))]


def test_image_store_setting(tmp_path: Path) -> None:
    base = {"var_dir": tmp_path, "packline_secret": "s"}
    default = open_image_store(CommonSettings.model_validate(base))
    assert isinstance(default, LocalImageStore) and default.root == tmp_path / "images"
    assert default.inline_bytes == INLINE_BYTES
    threaded = open_image_store(CommonSettings.model_validate({**base, "image_store_inline_bytes": 0}))
    assert isinstance(threaded, LocalImageStore) and threaded.inline_bytes == 0
    elsewhere = open_image_store(CommonSettings.model_validate({**base, "image_store": str(tmp_path / "x")}))
    assert isinstance(elsewhere, LocalImageStore) and elsewhere.root == tmp_path / "x"
    s3 = open_image_store(CommonSettings.model_validate(
        {**base, "image_store": "s3://bucket/some/prefix/", "s3_endpoint_url": "http://127.0.0.1:1", "aws_region": "eu-west-1"}))
    assert isinstance(s3, S3ImageStore) and (s3.bucket, s3.prefix) == ("bucket", "some/prefix")
    assert s3.key(PACK, "main.png") == f"some/prefix/{PACK}/main.png"
    assert s3.describe(PACK) == f"s3://bucket/some/prefix/{PACK}/"
    for bad in ("s3://", "s3:///prefix", "gs://bucket/x"):
        with pytest.raises(ValidationError):
            CommonSettings.model_validate({**base, "image_store": bad})
    assert parse_s3_url("s3://b") == ("b", "")
