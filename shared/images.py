"""Where finished images live, and how they are stored (the interface both stores share is
in shared/image_store.py).

One layout in two kinds of store (`IMAGE_STORE`): a local directory (the default,
`VAR_DIR/images`) or an S3-compatible bucket (`s3://bucket/prefix`):

    <root>/<pack_id>/<image_id>.png     the image, written whole (a file renamed into place,
                                        or one PUT), so one that exists is complete
    <root>/<pack_id>/<image_id>.json    the attempt that made it, written last: generation's
                                        idempotency check (`{"attempt": n}`, or on a
                                        directory the image's claim renamed into place,
                                        which names the same attempt)
    <root>/<pack_id>/meta.json          the pack's owner, so the api refuses everyone else
    <root>/<pack_id>/.<image_id>.claim  during a hand-over: what services/generation/claims.py
                                        puts there (this module only stores the bytes)

Generation writes; the api reads. Every method is async: boto3 (which is blocking) runs in
threads, and so does the local store, but for its small files (LocalImageStore)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import os
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from shared.image_store import CHUNK as CHUNK
from shared.image_store import JSON as JSON
from shared.image_store import PNG as PNG
from shared.image_store import ImageStore as ImageStore
from shared.image_store import StoredImage as StoredImage
from shared.image_store import check as check
from shared.image_store import read_chunks

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from shared.settings import CommonSettings

T = TypeVar("T")
INLINE_BYTES = 256 * 1024  # LocalImageStore: writes up to this size are made on the event loop
_TMP = itertools.count()  # temporary file names: unique per process without a random draw per write
_RUN = uuid.uuid4().hex[:8]


class LocalImageStore(ImageStore):
    """A directory, shared by every generation process and the api (one host, or a shared
    file system).

    Reads of the small files and writes of up to `inline_bytes` are made on the event loop
    itself: on a local disk their system calls take microseconds, less than a hop to a
    thread and back (the pool's wake-ups and the GIL handed over both ways), which under a
    burst cost generation more CPU than the files. Larger writes, listings and served
    images go to threads; `inline_bytes=0` sends everything there (a slow shared file system)."""

    def __init__(self, root: Path, public_url: str, inline_bytes: int = INLINE_BYTES) -> None:
        super().__init__(public_url)
        self.root, self.inline_bytes = root, inline_bytes
        self._root = os.fspath(root)

    async def _io(self, size: int, fn: Callable[..., T], /, *args: Any) -> T:
        return fn(*args) if 0 < self.inline_bytes and size <= self.inline_bytes else await asyncio.to_thread(fn, *args)

    def path(self, pack_id: str, name: str) -> Path:
        return self.root / pack_id / name

    def describe(self, pack_id: str) -> str:
        return str(self.root / pack_id)

    def _file(self, pack_id: str, name: str) -> str:
        return os.path.join(self._root, pack_id, name)  # a string: a Path costs more per file than its I/O

    async def _get(self, pack_id: str, name: str) -> bytes | None:
        return await self._io(0, _read, self._file(pack_id, name))  # only small files

    async def _put(self, pack_id: str, name: str, data: bytes, content_type: str) -> None:
        await self._io(len(data), atomic_write, self._file(pack_id, name), data)

    async def _put_many(self, pack_id: str, files: list[tuple[str, bytes, str]], meta: bytes | None,
                        drop: str | None) -> None:
        await self._io(sum(len(f[1]) for f in files), self._write_all, pack_id, files, meta, drop)  # one step

    def _write_all(self, pack_id: str, files: list[tuple[str, bytes, str]], meta: bytes | None, drop: str | None) -> None:
        """As the base class does, but a file that `drop` already says (the claim this
        process wrote names the attempt the marker names) is `drop` renamed onto it: one
        step instead of a file written and another deleted. Creating a file is most of what
        a save costs on a local disk, and the rename also makes "finished" and "no longer
        claimed" one change."""
        if meta is not None and not os.path.exists(owner := self._file(pack_id, "meta.json")):
            atomic_write(owner, meta)
        for i, (name, data, _type) in enumerate(files):
            if drop is not None and i == len(files) - 1 and _says_attempt(self._file(pack_id, drop), data):
                with contextlib.suppress(FileNotFoundError):
                    os.replace(self._file(pack_id, drop), self._file(pack_id, name))
                    return
            atomic_write(self._file(pack_id, name), data)
        if drop is not None:
            _unlink(self._file(pack_id, drop))

    async def _delete(self, pack_id: str, name: str) -> None:
        await self._io(0, _unlink, self._file(pack_id, name))

    async def _open(self, pack_id: str, name: str) -> StoredImage | None:
        try:
            fh = await asyncio.to_thread(open, self.path(pack_id, name), "rb")
        except (FileNotFoundError, IsADirectoryError):
            return None
        st = os.fstat(fh.fileno())
        # A file is only ever replaced whole (renamed into place): inode, mtime and size of
        # the open file name its bytes, without reading them.
        etag = f'"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"'
        return StoredImage(PNG, st.st_size, read_chunks(asyncio.to_thread, fh.read, fh.close), etag, fh.close)

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
        return StoredImage(obj.get("ContentType") or PNG, int(obj["ContentLength"]), read_chunks(self._call, body.read, body.close),
                           str(obj.get("ETag") or ""), body.close)

    async def _list(self, pack_id: str) -> list[str]:
        def names() -> list[str]:
            prefix = self.key(pack_id, "")
            found: list[str] = []
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix, Delimiter="/"):
                found += [obj["Key"][len(prefix):] for obj in page.get("Contents", ())]
            return found

        return await self._call(names)


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
    return LocalImageStore(Path(where) if where else settings.images_dir, settings.api_public_url,
                           inline_bytes=settings.image_store_inline_bytes)


def atomic_write(target: Path | str, data: bytes) -> None:
    """`target` holds `data` whole or is untouched: a temporary file renamed into place.
    Its directory is made when missing (once per pack, not before every write)."""
    folder, name = os.path.split(os.fspath(target))
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.{_RUN}.{next(_TMP)}.tmp")
    try:
        fh = open(tmp, "wb")
    except FileNotFoundError:
        os.makedirs(folder, exist_ok=True)
        fh = open(tmp, "wb")
    with fh:
        fh.write(data)
    os.replace(tmp, target)


def _says_attempt(path: str, marker: bytes) -> bool:
    """The JSON file at `path` is a claim (not answered) of the attempt `marker` names."""
    try:
        claim = json.loads(_read(path) or b"null")
        return isinstance(claim, dict) and not claim.get("answered") and claim.get("attempt") == json.loads(marker)["attempt"]
    except ValueError:
        return False


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        return None


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
