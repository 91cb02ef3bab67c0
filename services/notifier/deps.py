"""Request dependencies of the notifier: the caller (an API key with packs:read, or a stream
token for one pack), the store once it has caught up with Kafka, and the caller's pack.
Every one is `async def`, even when it awaits nothing: FastAPI runs a plain `def` in a
worker thread, a thread hop per dependency per request (and a stream opens with many)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Query, Request

from services.notifier import streams
from services.notifier.consumer import StatusFeed
from services.notifier.settings import Settings
from services.notifier.sse import Hub
from services.notifier.state import PackView, Store
from shared.auth import AuthError, Keyring, StreamClaims
from shared.http import ApiKey, KeyCheck, Scoped, from_state, not_ready, unauthorized
from shared.revocations import Revocations

Token = Annotated[str | None, Query(max_length=2000, description="stream token from POST /v1/packs")]
UserToken = Annotated[str | None, Query(alias="token", max_length=2000, description="user stream token from POST /v1/stream-tokens")]


async def get_settings(request: Request) -> Settings:
    return from_state(request, "settings", Settings)


SettingsDep = Annotated[Settings, Depends(get_settings)]


async def get_hub(request: Request) -> Hub:
    return from_state(request, "hub", Hub)


HubDep = Annotated[Hub, Depends(get_hub)]


async def caught_up(request: Request, settings: SettingsDep) -> Store:
    """The store, once rebuilt from Kafka; before that it would serve stale state: 503."""
    feed = from_state(request, "feed", StatusFeed)
    try:
        await asyncio.wait_for(feed.ready.wait(), settings.notifier_ready_timeout_s)
    except TimeoutError as exc:
        raise HTTPException(503, "notifier is still catching up with Kafka", headers={"Retry-After": "2"}) from exc
    return feed.store


StoreDep = Annotated[Store, Depends(caught_up)]


@dataclass(frozen=True)
class Caller:
    """Who is asking, and with which key (an API key, or the key behind a stream token)."""

    user_id: str
    generation: int
    key_id: str | None


ReadKey = Annotated[ApiKey | None, Depends(Scoped("packs:read", optional=True))]


async def pack_caller(request: Request, pack_id: str, key: ReadKey, token: Token = None) -> Caller:
    """A Bearer API key with packs:read, or a stream token for this pack whose key is not
    revoked (503 while the revocations are still being read, like any key)."""
    if key is not None:
        return Caller(key.user_id, key.generation, key.key_id)
    if token:
        return _token_caller(request, lambda keyring: keyring.verify_stream_token(token, pack_id))
    raise unauthorized("missing bearer API key or stream token")


async def key_caller(key: ReadKey) -> Caller:
    if key is None:
        raise unauthorized("missing bearer API key")
    return Caller(key.user_id, key.generation, key.key_id)


async def stream_caller(request: Request, key: ReadKey, token: UserToken = None) -> Caller:
    """A Bearer API key with packs:read, or a user stream token whose key is not revoked."""
    if key is not None:
        return Caller(key.user_id, key.generation, key.key_id)
    if token:
        return _token_caller(request, lambda keyring: keyring.verify_user_stream_token(token))
    raise unauthorized("missing bearer API key or user stream token")


def _token_caller(request: Request, verify: Callable[[Keyring], StreamClaims]) -> Caller:
    """The caller a stream token names, once its signature holds and its key is not revoked
    (503 while the revocations are still being read, like any key)."""
    check = from_state(request, "keys", KeyCheck)
    if not check.revocations.ready.is_set():
        raise not_ready()
    try:
        claims = verify(check.keyring)
    except AuthError as exc:
        raise unauthorized(str(exc)) from exc
    check.admit(claims.user_id, claims.generation, claims.key_id)
    return Caller(claims.user_id, claims.generation, claims.key_id)


PackCaller = Annotated[Caller, Depends(pack_caller)]
StreamCaller = Annotated[Caller, Depends(stream_caller)]
KeyCaller = Annotated[Caller, Depends(key_caller)]


def still_valid(revocations: Revocations, key: Caller | ApiKey) -> streams.Allowed:
    """Asked by a stream after every wake-up (a revocation wakes the user's streams): is
    the key it was opened with, or the key behind its token, still valid?"""
    return lambda: revocations.allows(key.user_id, key.generation, key.key_id)


def _allowed(request: Request, caller: Caller) -> streams.Allowed:
    return still_valid(from_state(request, "keys", KeyCheck).revocations, caller)


async def pack_allowed(request: Request, caller: PackCaller) -> streams.Allowed:
    return _allowed(request, caller)


async def user_allowed(request: Request, caller: StreamCaller) -> streams.Allowed:
    return _allowed(request, caller)


async def user_of_key(caller: KeyCaller) -> str:
    return caller.user_id


async def user_of_stream(caller: StreamCaller) -> str:
    """The user behind a Bearer API key, or behind a user stream token."""
    return caller.user_id


async def user_of_pack(caller: PackCaller) -> str:
    """The user behind a Bearer API key, or behind a stream token for this pack."""
    return caller.user_id


async def owned_pack(
    pack_id: str, user_id: Annotated[str, Depends(user_of_pack)], store: StoreDep, settings: SettingsDep,
) -> PackView:
    pack = await store.wait_for_pack(pack_id, settings.notifier_pack_wait_s)
    # Another user's pack is indistinguishable from a missing one.
    if pack is None or pack.user_id != user_id:
        raise HTTPException(404, "no such pack")
    return pack


async def last_event_id(request: Request) -> str | None:
    """The header, or a query parameter for clients that cannot set headers."""
    return request.headers.get("last-event-id") or request.query_params.get("last_event_id")


PackDep = Annotated[PackView, Depends(owned_pack)]
UserDep = Annotated[str, Depends(user_of_key)]
StreamUserDep = Annotated[str, Depends(user_of_stream)]
PackAllowedDep = Annotated[streams.Allowed, Depends(pack_allowed)]
UserAllowedDep = Annotated[streams.Allowed, Depends(user_allowed)]
LastEventId = Annotated[str | None, Depends(last_event_id)]
