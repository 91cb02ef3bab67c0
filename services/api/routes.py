"""HTTP edge of the api: domain errors become statuses here and nowhere else."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Response
from fastapi.responses import HTMLResponse, StreamingResponse
from prometheus_client import Counter, Histogram

from services.api import handlers, reads
from services.api.deps import (
    IdempotencyDep,
    ImagesDep,
    InstancesDep,
    KeyCheckDep,
    LimiterDep,
    PublisherDep,
    ReaderDep,
    SettingsDep,
    WriterKey,
)
from shared.auth import make_stream_token
from shared.errors import BrokerUnavailable
from shared.events import IdempotencyClaimed
from shared.kafka import Outgoing
from shared.logs import lifecycle
from shared.topics import PACKS_REQUESTED, PACKS_STATUS

router = APIRouter()
PACKS = Counter("packline_api_packs_total", "pack requests by outcome", ["outcome"])
PRODUCE_SECONDS = Histogram("packline_api_produce_seconds", "time for Kafka to acknowledge a pack request")
IDEMPOTENCY_KEY = r"^[\x21-\x7e]{1,200}$"
STATIC = Path(__file__).parent / "static"


@router.post("/v1/packs", status_code=202, response_model=handlers.PackAccepted202)
async def create_pack(
    body: handlers.PackRequestBody, key: WriterKey, settings: SettingsDep, publisher: PublisherDep,
    limiter: LimiterDep, idempotency: IdempotencyDep, instances: InstancesDep, check: KeyCheckDep,
    idempotency_key: Annotated[str | None, Header(pattern=IDEMPOTENCY_KEY, description="1-200 printable ASCII characters")] = None,
) -> handlers.PackAccepted202:
    user_id = key.user_id
    wait = limiter.take(user_id, share=instances.share())  # the deployment's limit, shared by the live instances
    if wait:
        PACKS.labels("rate_limited").inc()
        raise HTTPException(429, "too many requests", headers={"Retry-After": str(math.ceil(wait))})
    event, cost, digest, draft = handlers.build_request(user_id, body, idempotency_key, settings.price_listing, settings.price_aplus)
    unavailable = HTTPException(503, "the pack queue is unavailable; nothing was charged, try again", headers={"Retry-After": "5"})
    if idempotency_key:
        index = idempotency.index
        if not index.check(user_id, idempotency_key, digest):
            PACKS.labels("conflict").inc()
            raise conflict()
        if not index.known(user_id, idempotency_key):
            # A new key: claim it on api.idempotency. The first claim in the log wins, even
            # against another instance claiming it with another body at the same moment.
            claim = IdempotencyClaimed(user_id=user_id, idempotency_key=idempotency_key, request_hash=digest,
                                       pack_id=event.pack_id)
            try:
                won = await idempotency.claim(claim)
            except BrokerUnavailable as exc:
                PACKS.labels("unavailable").inc()
                raise unavailable from exc
            if not won:
                PACKS.labels("conflict").inc()
                raise conflict()
    try:
        with PRODUCE_SECONDS.time():
            await publisher.send([
                Outgoing.of(settings.topics.name(PACKS_STATUS), draft, event.pack_id),
                Outgoing.of(settings.topics.name(PACKS_REQUESTED), event, user_id),
            ])
    except BrokerUnavailable as exc:
        PACKS.labels("unavailable").inc()
        raise unavailable from exc
    PACKS.labels("accepted").inc()
    lifecycle("accepted", pack_id=event.pack_id, user_id=user_id, event_id=event.event_id)
    pack_id = str(event.pack_id)
    base = settings.notifier_public_url.rstrip("/")
    return handlers.PackAccepted202(
        pack_id=pack_id, cost=cost, status_url=f"{base}/v1/packs/{pack_id}", stream_url=f"{base}/v1/packs/{pack_id}/events",
        # The token carries the key that minted it: revoking that key ends the token too.
        stream_token=make_stream_token(check.keyring.signing, user_id, pack_id, settings.stream_token_ttl_s,
                                       generation=key.generation, key_id=key.key_id),
    )


def conflict() -> HTTPException:
    return HTTPException(409, "this Idempotency-Key was already used with a different request body")


@router.get("/v1/images/{pack_id}/{image_id}", response_class=StreamingResponse,
            responses={200: {"content": {"image/png": {}}}, 304: {"description": "If-None-Match names its ETag"},
                       404: {"description": "no such image (or another user's)"}})
async def get_image(
    pack_id: str, image_id: str, user_id: ReaderDep, images: ImagesDep, if_none_match: reads.IfNoneMatch = None,
) -> Response:
    """The image's bytes from the image store (a directory or S3), streamed as they are
    read, with a strong ETag; 304 when If-None-Match names it."""
    image = await images.open_owned(pack_id, image_id, user_id)
    if image is None:
        raise HTTPException(404, "no such image")
    return reads.image_response(image, if_none_match)


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def index() -> HTMLResponse:
    return HTMLResponse((STATIC / "index.html").read_text())
