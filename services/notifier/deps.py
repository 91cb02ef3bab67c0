"""Request dependencies of the notifier: the caller (an API key, or a stream token for one
pack), the store once it has caught up with Kafka, and the caller's pack."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import Depends, HTTPException, Query, Request

from services.notifier import streams
from services.notifier.consumer import StatusFeed
from services.notifier.settings import Settings
from services.notifier.state import PackView, Store
from shared.auth import AuthError, verify_stream_token
from shared.http import KeyCheck, OptionalKey, from_state, unauthorized

Token = Annotated[str | None, Query(max_length=2000, description="stream token from POST /v1/packs")]


def get_settings(request: Request) -> Settings:
    return from_state(request, "settings", Settings)


SettingsDep = Annotated[Settings, Depends(get_settings)]


async def caught_up(request: Request, settings: SettingsDep) -> Store:
    """The store, once rebuilt from Kafka; before that it would serve stale state: 503."""
    feed = from_state(request, "feed", StatusFeed)
    try:
        await asyncio.wait_for(feed.ready.wait(), settings.notifier_ready_timeout_s)
    except TimeoutError as exc:
        raise HTTPException(503, "notifier is still catching up with Kafka", headers={"Retry-After": "2"}) from exc
    return feed.store


StoreDep = Annotated[Store, Depends(caught_up)]


def key_allowed(request: Request, key: OptionalKey) -> streams.Allowed:
    """For a stream opened with an API key: is that key still valid? (A stream token is
    scoped to one pack and expires by itself.)"""
    if key is None:
        return lambda: True
    revocations = from_state(request, "keys", KeyCheck).revocations
    return lambda: revocations.allows(key.user_id, key.generation)


def user_of_key(key: OptionalKey) -> str:
    if key is None:
        raise unauthorized("missing bearer API key or stream token")
    return key.user_id


def user_of_pack(pack_id: str, key: OptionalKey, settings: SettingsDep, token: Token = None) -> str:
    """The user behind a Bearer API key, or behind a stream token for this pack."""
    if key is not None:
        return key.user_id
    if token:
        try:
            return verify_stream_token(settings.packline_secret, token, pack_id)
        except AuthError as exc:
            raise unauthorized(str(exc)) from exc
    raise unauthorized("missing bearer API key or stream token")


async def owned_pack(
    pack_id: str, user_id: Annotated[str, Depends(user_of_pack)], store: StoreDep, settings: SettingsDep,
) -> PackView:
    pack = await store.wait_for_pack(pack_id, settings.notifier_pack_wait_s)
    # Another user's pack is indistinguishable from a missing one.
    if pack is None or pack.user_id != user_id:
        raise HTTPException(404, "no such pack")
    return pack


def last_event_id(request: Request) -> str | None:
    """The header, or a query parameter for clients that cannot set headers."""
    return request.headers.get("last-event-id") or request.query_params.get("last_event_id")


PackDep = Annotated[PackView, Depends(owned_pack)]
UserDep = Annotated[str, Depends(user_of_key)]
AllowedDep = Annotated[streams.Allowed, Depends(key_allowed)]
LastEventId = Annotated[str | None, Depends(last_event_id)]
