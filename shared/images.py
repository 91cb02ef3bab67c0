"""Where finished images live, and the one module that knows how they are stored.

One layout in two kinds of store (`IMAGE_STORE`): a local directory (the default,
`VAR_DIR/images`) or an S3-compatible bucket (`s3://bucket/prefix`):

    <root>/<pack_id>/<image_id>.png     the image, written whole (a file renamed into place,
                                        or one PUT), so one that exists is complete
    <root>/<pack_id>/<image_id>.json    the attempt that made it, written last: generation's
                                        idempotency check
    <root>/<pack_id>/meta.json          the pack's owner, so the api refuses everyone else
    <root>/<pack_id>/.<image_id>.claim  during a hand-over: what services/generation/claims.py
                                        puts there (this module only stores the bytes)

Generation writes; the api reads. Every method is async: the local store and boto3 (which
is blocking) run in threads."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from shared.settings import CommonSettings

T = TypeVar("T")
SAFE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
CHUNK = 64 * 1024
PNG = "image/png"


def check(pack_id: str, image_id: str) -> None:
    """Ids become path segments and object keys: refuse anything but plain names."""
    if not SAFE.match(image_id) or not SAFE.match(pack_id.replace("-", "_")):
        raise ValueError(f"unsafe image path {pack_id}/{image_id}")


def _nothing() -> None:
    pass


@dataclass
class StoredImage:
    """An image the api may serve: its bytes arrive in chunks as the client reads them.
    `etag` (quoted, strong) changes whenever the stored bytes do; `release` frees what
    `chunks` would have closed, for an image that is not read after all (a 304)."""

    content_type: str
    length: int
    chunks: AsyncIterator[bytes]
    etag: str = ""
    release: Callable[[], None] = _nothing


class ImageStore(ABC):
    def __init__(self, public_url: str) -> None:
        self.public_url = public_url.rstrip("/")

    def url(self, pack_id: str, image_id: str) -> str:
        """Where clients fetch the image: always the api, whatever the store."""
        return f"{self.public_url}/v1/images/{pack_id}/{image_id}"

    async def finished(self, pack_id: str, image_id: str) -> int | None:
        """The attempt that made this image, if it exists: its marker is written last."""
        check(pack_id, image_id)
        raw = await self._get(pack_id, f"{image_id}.json")
        try:
            return None if raw is None else int(json.loads(raw)["attempt"])
        except (ValueError, KeyError, TypeError):
            return None

    async def save(self, pack_id: str, image_id: str, user_id: str, data: bytes, attempt: int) -> None:
        check(pack_id, image_id)
        if await self._get(pack_id, "meta.json") is None:  # the owner, so the api can refuse everyone else
            await self._put(pack_id, "meta.json", json.dumps({"pack_id": pack_id, "user_id": user_id}).encode(), "application/json")
        await self._put(pack_id, f"{image_id}.png", data, PNG)
        await self._put(pack_id, f"{image_id}.json", json.dumps({"attempt": attempt}).encode(), "application/json")

    async def open_owned(self, pack_id: str, image_id: str, user_id: str) -> StoredImage | None:
        """The image if it exists and `user_id` owns its pack (else None: someone else's image
        is indistinguishable from a missing one)."""
        try:
            check(pack_id, image_id)
        except ValueError:
            return None
        return await self._open(pack_id, f"{image_id}.png") if await self.owner(pack_id) == user_id else None

    async def delivered(self, pack_id: str) -> list[str]:
        """The ids of the pack's finished images (those whose attempt marker exists: it is
        written last), in order; [] for a pack with none, or an unsafe id."""
        try:
            check(pack_id, "meta")
        except ValueError:
            return []
        names = await self._list(pack_id)
        return sorted(n[:-5] for n in names if n.endswith(".json") and n != "meta.json" and SAFE.match(n[:-5]))

    async def discard(self, pack_id: str, image_id: str) -> None:
        """Remove an image that must not be delivered (made after its pack was cancelled):
        its marker first, so that it is never seen as finished without its bytes."""
        check(pack_id, image_id)
        await self._delete(pack_id, f"{image_id}.json")
        await self._delete(pack_id, f"{image_id}.png")

    async def owner(self, pack_id: str) -> str | None:
        """Who owns the pack's images (None: no image stored yet, or an unsafe id)."""
        try:
            check(pack_id, "meta")
            raw = await self._get(pack_id, "meta.json")
            return None if raw is None else str(json.loads(raw)["user_id"])
        except (ValueError, KeyError, TypeError):
            return None

    # Claims: the bytes only; their meaning is generation's (services/generation/claims.py).
    async def put_claim(self, pack_id: str, image_id: str, data: bytes) -> None:
        check(pack_id, image_id)
        await self._put(pack_id, f".{image_id}.claim", data, "application/json")

    async def get_claim(self, pack_id: str, image_id: str) -> bytes | None:
        check(pack_id, image_id)
        return await self._get(pack_id, f".{image_id}.claim")

    async def delete_claim(self, pack_id: str, image_id: str) -> None:
        check(pack_id, image_id)
        await self._delete(pack_id, f".{image_id}.claim")

    @abstractmethod
    def describe(self, pack_id: str) -> str:
        """Where a pack's images are, for people (a directory or an s3:// address)."""

    @abstractmethod
    async def _get(self, pack_id: str, name: str) -> bytes | None: ...

    @abstractmethod
    async def _put(self, pack_id: str, name: str, data: bytes, content_type: str) -> None: ...

    @abstractmethod
    async def _delete(self, pack_id: str, name: str) -> None: ...

    @abstractmethod
    async def _open(self, pack_id: str, name: str) -> StoredImage | None: ...

    @abstractmethod
    async def _list(self, pack_id: str) -> list[str]:
        """The names stored under the pack (not recursive)."""


class LocalImageStore(ImageStore):
    """A directory, shared by every generation process and the api (one host, or a shared
    file system)."""

    def __init__(self, root: Path, public_url: str) -> None:
        super().__init__(public_url)
        self.root = root

    def path(self, pack_id: str, name: str) -> Path:
        return self.root / pack_id / name

    def describe(self, pack_id: str) -> str:
        return str(self.root / pack_id)

    async def _get(self, pack_id: str, name: str) -> bytes | None:
        try:
            return await asyncio.to_thread(self.path(pack_id, name).read_bytes)
        except FileNotFoundError:
            return None

    async def _put(self, pack_id: str, name: str, data: bytes, content_type: str) -> None:
        await asyncio.to_thread(atomic_write, self.path(pack_id, name), data)

    async def _delete(self, pack_id: str, name: str) -> None:
        await asyncio.to_thread(self.path(pack_id, name).unlink, missing_ok=True)

    async def _open(self, pack_id: str, name: str) -> StoredImage | None:
        try:
            fh = await asyncio.to_thread(open, self.path(pack_id, name), "rb")
        except (FileNotFoundError, IsADirectoryError):
            return None
        st = os.fstat(fh.fileno())
        # A file is only ever replaced whole (renamed into place): inode, mtime and size of
        # the open file name its bytes, without reading them.
        etag = f'"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"'
        return StoredImage(PNG, st.st_size, _chunks(asyncio.to_thread, fh.read, fh.close), etag, fh.close)

    async def _list(self, pack_id: str) -> list[str]:
        def names() -> list[str]:
            try:
                return [entry.name for entry in os.scandir(self.root / pack_id) if entry.is_file()]
            except (FileNotFoundError, NotADirectoryError):
                return []

        return await asyncio.to_thread(names)


class S3ImageStore(ImageStore):
    """A bucket of an S3-compatible service, `s3://bucket/prefix`. boto3's client is
    thread-safe; each call runs in the store's own threads, as many as the client's
    connections: the default executor has a few per CPU, and S3 calls queued behind one
    another there would delay the refresh of a claim past its staleness."""

    def __init__(self, client: S3Client, bucket: str, prefix: str, public_url: str, threads: int = 64) -> None:
        super().__init__(public_url)
        self.client, self.bucket, self.prefix = client, bucket, prefix.strip("/")
        self._threads = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="s3")

    async def _call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._threads, functools.partial(fn, *args, **kwargs))

    def key(self, pack_id: str, name: str) -> str:
        return f"{self.prefix}/{pack_id}/{name}" if self.prefix else f"{pack_id}/{name}"

    def describe(self, pack_id: str) -> str:
        return f"s3://{self.bucket}/{self.key(pack_id, '')}"

    async def _get(self, pack_id: str, name: str) -> bytes | None:
        def get() -> bytes | None:
            try:
                body = self.client.get_object(Bucket=self.bucket, Key=self.key(pack_id, name))["Body"]
            except self.client.exceptions.NoSuchKey:
                return None
            with body:
                return body.read()

        return await self._call(get)

    async def _put(self, pack_id: str, name: str, data: bytes, content_type: str) -> None:
        await self._call(self.client.put_object, Bucket=self.bucket, Key=self.key(pack_id, name), Body=data,
                         ContentType=content_type)

    async def _delete(self, pack_id: str, name: str) -> None:
        await self._call(self.client.delete_object, Bucket=self.bucket, Key=self.key(pack_id, name))

    async def _open(self, pack_id: str, name: str) -> StoredImage | None:
        def get() -> Any:
            try:
                return self.client.get_object(Bucket=self.bucket, Key=self.key(pack_id, name))
            except self.client.exceptions.NoSuchKey:
                return None

        obj = await self._call(get)
        if obj is None:
            return None
        body = obj["Body"]
        return StoredImage(obj.get("ContentType") or PNG, int(obj["ContentLength"]), _chunks(self._call, body.read, body.close),
                           str(obj.get("ETag") or ""), body.close)

    async def _list(self, pack_id: str) -> list[str]:
        def names() -> list[str]:
            prefix = self.key(pack_id, "")
            found: list[str] = []
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix, Delimiter="/"):
                found += [obj["Key"][len(prefix):] for obj in page.get("Contents", ())]
            return found

        return await self._call(names)


async def _chunks(run: Callable[..., Any], read: Callable[[int], bytes], close: Callable[[], None]) -> AsyncIterator[bytes]:
    """`read` in `run`'s threads until it returns nothing, then `close`."""
    try:
        while chunk := await run(read, CHUNK):
            yield chunk
    finally:
        close()


def s3_client(endpoint_url: str | None, region: str | None, access_key: str | None = None,
              secret_key: str | None = None, pool: int = 64) -> S3Client:
    """A boto3 S3 client. Credentials: the given ones, else boto3's own chain
    (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, a profile, an instance role)."""
    import boto3
    from botocore.config import Config

    config = Config(
        # Only the checksums S3 requires: S3-compatible servers (s3proxy, older MinIO) refuse
        # the ones boto3 >= 1.36 sends by default.
        request_checksum_calculation="when_required", response_checksum_validation="when_required",
        retries={"mode": "standard", "max_attempts": 5},
        max_pool_connections=pool,  # one connection per concurrent image (GENERATION_CONCURRENCY)
        s3={"addressing_style": "path"} if endpoint_url else None,  # a custom endpoint rarely has per-bucket hosts
    )
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url, region_name=region, config=config,
                                          aws_access_key_id=access_key, aws_secret_access_key=secret_key)


def parse_s3_url(url: str) -> tuple[str, str]:
    """`s3://bucket/prefix` -> (bucket, prefix); the prefix may be empty."""
    if not url.startswith("s3://") or not (rest := url[len("s3://"):]).split("/", 1)[0]:
        raise ValueError(f"not an s3://bucket/prefix address: {url!r}")
    bucket, _, prefix = rest.partition("/")
    return bucket, prefix.strip("/")


def open_image_store(settings: CommonSettings, pool: int = 64) -> ImageStore:
    """The store `IMAGE_STORE` names: empty (VAR_DIR/images), a directory, or s3://bucket/prefix."""
    where = settings.image_store
    if where.startswith("s3://"):
        bucket, prefix = parse_s3_url(where)
        return S3ImageStore(s3_client(settings.s3_endpoint_url, settings.aws_region, pool=pool), bucket, prefix,
                            settings.api_public_url, threads=pool)
    return LocalImageStore(Path(where) if where else settings.images_dir, settings.api_public_url)


def atomic_write(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)
