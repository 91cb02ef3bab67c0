"""What the api serves for reading a pack's results: one image with its validator, all of a
pack's delivered images as one zip, and the short-lived token that opens a user's stream
(`GET /v1/events?token=` on the notifier) in a browser, which cannot set headers there."""

from __future__ import annotations

import io
import time
import zipfile
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from typing_extensions import Buffer

from services.api.deps import ImagesDep, KeyCheckDep, SettingsDep
from shared.auth import make_user_stream_token
from shared.http import ApiKey, Scoped
from shared.images import ImageStore, StoredImage

router = APIRouter()
ReadKey = Annotated[ApiKey, Depends(Scoped("packs:read"))]
# Images change only when an operator replays one: a client revalidates after this long
# (a 304 with the same ETag costs no bytes).
IMAGE_MAX_AGE_S = 300
CACHE_CONTROL = f"private, max-age={IMAGE_MAX_AGE_S}"


def image_response(image: StoredImage, if_none_match: str | None) -> Response:
    """The image's bytes streamed, or 304 when the client already holds them."""
    headers = {"Cache-Control": CACHE_CONTROL}
    if image.etag:
        headers["ETag"] = image.etag
        if if_none_match and _matches(if_none_match, image.etag):
            image.release()
            return Response(status_code=304, headers=headers)
    headers["Content-Length"] = str(image.length)
    return StreamingResponse(image.chunks, media_type=image.content_type, headers=headers)


def _matches(header: str, etag: str) -> bool:
    """RFC 9110 If-None-Match: `*`, or any listed tag equal under the weak comparison."""
    if header.strip() == "*":
        return True
    return any(tag.strip().removeprefix("W/") == etag.removeprefix("W/") for tag in header.split(","))


@router.get("/v1/packs/{pack_id}/images.zip", response_class=StreamingResponse,
            responses={200: {"content": {"application/zip": {}}},
                       404: {"description": "no such pack, another user's, or none of its images delivered yet"}})
async def images_zip(pack_id: str, key: ReadKey, images: ImagesDep) -> StreamingResponse:
    """Every delivered image of the pack as `<image_id>.png` in one zip (stored, not
    compressed: PNGs do not compress), streamed one image at a time."""
    if await images.owner(pack_id) != key.user_id:
        # The api holds no pack state: a pack with no image stored yet looks like no pack.
        raise HTTPException(404, "no such pack, or no image of it delivered yet")
    delivered = await images.delivered(pack_id)
    if not delivered:
        raise HTTPException(404, "no such pack, or no image of it delivered yet")
    return StreamingResponse(
        _zip(images, pack_id, key.user_id, delivered), media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="pack-{pack_id}.zip"', "Cache-Control": "private, no-store"},
    )


class _Sink(io.RawIOBase):
    """What zipfile writes into: the bytes wait here until the response takes them. Not
    seekable, so zipfile streams (sizes and CRC in a descriptor after each file)."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Buffer, /) -> int:
        chunk = bytes(data)
        self.parts.append(chunk)
        return len(chunk)

    def take(self) -> bytes:
        data, self.parts = b"".join(self.parts), []
        return data


async def _zip(images: ImageStore, pack_id: str, user_id: str, image_ids: list[str]) -> AsyncIterator[bytes]:
    """At most one chunk of one image is held at a time."""
    sink = _Sink()
    now = time.gmtime()
    stamp = (now.tm_year, now.tm_mon, now.tm_mday, now.tm_hour, now.tm_min, now.tm_sec)
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_STORED) as archive:
        for image_id in image_ids:
            image = await images.open_owned(pack_id, image_id, user_id)
            if image is None:
                continue  # gone since it was listed
            info = zipfile.ZipInfo(f"{image_id}.png", date_time=stamp)
            info.file_size = image.length
            with archive.open(info, "w") as entry:
                async for chunk in image.chunks:
                    entry.write(chunk)
                    yield sink.take()
            yield sink.take()
    yield sink.take()


class StreamToken(BaseModel):
    stream_token: str
    expires_at: int  # epoch seconds
    events_url: str  # the notifier's stream of all the user's packs, token included


@router.post("/v1/stream-tokens", response_model=StreamToken, status_code=201)
async def stream_token(key: ReadKey, settings: SettingsDep, check: KeyCheckDep) -> StreamToken:
    """A token for `GET /v1/events?token=` (all of the caller's packs). It carries the key
    that minted it: revoking that key ends the token and the streams it opened."""
    token, expires = make_user_stream_token(check.keyring.signing, key.user_id, settings.user_stream_token_ttl_s,
                                            generation=key.generation, key_id=key.key_id)
    base = settings.notifier_public_url.rstrip("/")
    return StreamToken(stream_token=token, expires_at=expires, events_url=f"{base}/v1/events?token={token}")


IfNoneMatch = Annotated[str | None, Header(max_length=2000)]
