"""What every image store does, whatever it keeps the bytes in: generation writes through
it, the api reads. The layout and the two stores (a directory, an S3 bucket) are in
shared/images.py, which is where to import all of this from."""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

SAFE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
CHUNK = 64 * 1024
PNG = "image/png"
JSON = "application/json"
OWNED_PACKS = 10_000  # packs whose meta.json a store remembers having seen (about 1 MB)


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
        self._owned: OrderedDict[str, None] = OrderedDict()  # LRU: packs whose meta.json is stored

    def url(self, pack_id: str, image_id: str) -> str:
        """Where clients fetch the image: always the api, whatever the store."""
        return f"{self.public_url}/v1/images/{pack_id}/{image_id}"

    async def finished(self, pack_id: str, image_id: str) -> int | None:
        """The attempt that made this image, if it exists: its marker is written last."""
        check(pack_id, image_id)
        return marker_attempt(await self._get(pack_id, f"{image_id}.json"))

    async def save(self, pack_id: str, image_id: str, user_id: str, data: bytes, attempt: int,
                   release_claim: bool = False) -> None:
        """The image, then its attempt marker (it means finished), then, with `release_claim`,
        its claim deleted. Before them the pack's owner (so the api can refuse everyone else),
        unless this process has seen it: meta.json is never rewritten nor removed, so it is
        not read again for every image. One step on the local store."""
        check(pack_id, image_id)
        meta = None if pack_id in self._owned else json.dumps({"pack_id": pack_id, "user_id": user_id}).encode()
        files = [(f"{image_id}.png", data, PNG), (f"{image_id}.json", b'{"attempt": %d}' % attempt, JSON)]
        await self._put_many(pack_id, files, meta, f".{image_id}.claim" if release_claim else None)
        self._owned[pack_id] = None
        self._owned.move_to_end(pack_id)
        if len(self._owned) > OWNED_PACKS:
            self._owned.popitem(last=False)

    async def _put_many(self, pack_id: str, files: list[tuple[str, bytes, str]], meta: bytes | None,
                        drop: str | None) -> None:
        """meta.json (when given) unless one is stored, then `files`, each whole, in order,
        then `drop` deleted."""
        if meta is not None and await self._get(pack_id, "meta.json") is None:
            await self._put(pack_id, "meta.json", meta, JSON)
        for name, data, content_type in files:
            await self._put(pack_id, name, data, content_type)
        if drop is not None:
            await self._delete(pack_id, drop)

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
        await self._put(pack_id, f".{image_id}.claim", data, JSON)

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


async def read_chunks(run: Callable[..., Any], read: Callable[[int], bytes], close: Callable[[], None]) -> AsyncIterator[bytes]:
    """`read` in `run`'s threads until it returns nothing, then `close`."""
    try:
        while chunk := await run(read, CHUNK):
            yield chunk
    finally:
        close()


def marker_attempt(marker: bytes | None) -> int | None:
    try:
        return None if marker is None else int(json.loads(marker)["attempt"])
    except (ValueError, KeyError, TypeError):
        return None
