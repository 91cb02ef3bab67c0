"""`POST /v1/packs`, the api's hottest path: `accept` (rate limit, Idempotency-Key claim,
the durable produce, the 202's body), shared by the FastAPI route and by `PackFastPath`,
which serves the ordinary request (a good key, a valid JSON body) without FastAPI's
routing and dependency machinery, and hands every other request to the app unchanged, so
each error is answered by the route itself."""

from __future__ import annotations

import json
import math
import re
from typing import Any

from fastapi import HTTPException, Request
from prometheus_client import Counter, Histogram
from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.api import handlers
from services.api.deps import PackIntake, get_pack_intake
from shared.auth import KeyClaims, make_stream_token
from shared.errors import BrokerUnavailable
from shared.events import IdempotencyClaimed
from shared.kafka import Outgoing
from shared.logs import lifecycle
from shared.topics import PACKS_REQUESTED, PACKS_STATUS

PACKS = Counter("packline_api_packs_total", "pack requests by outcome", ["outcome"])
ACCEPTED = PACKS.labels("accepted")
PRODUCE_SECONDS = Histogram("packline_api_produce_seconds", "time for Kafka to acknowledge a pack request")
IDEMPOTENCY_KEY = r"^[\x21-\x7e]{1,200}$"
_IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY)
_JSON_TYPES = (b"application/json", b"application/json; charset=utf-8")


def conflict() -> HTTPException:
    return HTTPException(409, "this Idempotency-Key was already used with a different request body")


async def accept(
    intake: PackIntake, key: KeyClaims, body: handlers.PackRequestBody, idempotency_key: str | None,
) -> dict[str, Any]:
    """The 202's body once the request is durably in Kafka; HTTPException for 409, 429, 503."""
    settings, idempotency = intake.settings, intake.idempotency
    user_id = key.user_id
    wait = intake.limiter.take(user_id, share=intake.instances.share())  # the deployment's limit, shared by the live instances
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
            await intake.publisher.send([
                Outgoing.of(settings.topics.name(PACKS_STATUS), draft, event.pack_id),
                Outgoing.of(settings.topics.name(PACKS_REQUESTED), event, user_id),
            ])
    except BrokerUnavailable as exc:
        PACKS.labels("unavailable").inc()
        raise unavailable from exc
    ACCEPTED.inc()
    lifecycle("accepted", pack_id=event.pack_id, user_id=user_id, event_id=event.event_id)
    pack_id = str(event.pack_id)
    base = settings.notifier_public_url.rstrip("/")
    return {  # handlers.PackAccepted202
        "pack_id": pack_id, "status": "DRAFT", "cost": cost, "status_url": f"{base}/v1/packs/{pack_id}",
        "stream_url": f"{base}/v1/packs/{pack_id}/events",
        # The token carries the key that minted it: revoking that key ends the token too.
        "stream_token": make_stream_token(intake.check.keyring.signing, user_id, pack_id, settings.stream_token_ttl_s,
                                          generation=key.generation, key_id=key.key_id),
    }


class PackFastPath:
    """ASGI middleware for `POST /v1/packs`: when the request has one JSON body that
    validates, a Bearer key with `packs:write` that passes every check, at most one valid
    Idempotency-Key, and the api is ready, it calls `accept` itself. Anything else (and
    every request while FastAPI's own tracing is on, whose spans name the route) goes to
    the app with its body replayed: the checks here only decide which way to go, they
    answer nothing, and they have no effect (the key's usage report excepted, as the
    route's own check would make it)."""

    def __init__(self, app: ASGIApp, route: object) -> None:
        self.app, self.route = app, route  # the route, for the metrics' `route` label (shared/metrics.py)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/v1/packs" or scope["method"] != "POST" \
                or scope.get("fastapi.telemetry") is not None:
            await self.app(scope, receive, send)
            return
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        ready = await self._ready(scope, body)
        if ready is None:
            await self.app(scope, replay, send)
            return
        scope["route"] = self.route
        try:
            status, answer, headers = 202, await accept(*ready), {}
        except HTTPException as exc:
            status, answer, headers = exc.status_code, {"detail": exc.detail}, dict(exc.headers or {})
        content = json.dumps(answer, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
        raw = [(b"content-length", str(len(content)).encode()), (b"content-type", b"application/json")]
        raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": content})

    async def _ready(
        self, scope: Scope, body: bytes,
    ) -> tuple[PackIntake, KeyClaims, handlers.PackRequestBody, str | None] | None:
        """What `accept` takes, when this request is an ordinary one; else None."""
        found: dict[bytes, list[bytes]] = {}
        for name, value in scope["headers"]:
            if name in (b"authorization", b"content-type", b"idempotency-key"):
                found.setdefault(name, []).append(value)
        auth, types, idem = found.get(b"authorization"), found.get(b"content-type"), found.get(b"idempotency-key")
        if not auth or len(auth) > 1 or types is None or len(types) > 1 or types[0].lower() not in _JSON_TYPES:
            return None
        idempotency_key = idem[0].decode("latin-1") if idem and len(idem) == 1 else None
        if idem and (idempotency_key is None or not _IDEMPOTENCY_KEY.fullmatch(idempotency_key)):
            return None
        try:
            intake = await get_pack_intake(Request(scope))
            request = handlers.PackRequestBody.model_validate(json.loads(body))  # as FastAPI does: the same model, mode and parser
            key = intake.check.bearer(auth[0].decode("latin-1"))  # last: it reports the key's use
        except (HTTPException, ValidationError, ValueError):
            return None
        return (intake, key, request, idempotency_key) if key is not None and key.has("packs:write") else None
