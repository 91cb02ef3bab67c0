"""Request dependencies: settings, the publisher, the authenticated user and the scope
each endpoint needs, the key registry."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from services.api.limits import IdempotencyIndex, RateLimiter
from services.api.settings import Settings
from shared.http import ApiKey, CurrentKey, KeyCheck, Scoped, from_state, not_ready
from shared.images import ImageStore
from shared.kafka import Publisher
from shared.keys import KeyRegistry


def get_settings(request: Request) -> Settings:
    return from_state(request, "settings", Settings)


def get_publisher(request: Request) -> Publisher:
    return from_state(request, "publisher", Publisher)


def get_limiter(request: Request) -> RateLimiter:
    return from_state(request, "limiter", RateLimiter)


def get_idempotency(request: Request) -> IdempotencyIndex:
    return from_state(request, "idempotency", IdempotencyIndex)


def get_images(request: Request) -> ImageStore:
    return from_state(request, "images", ImageStore)


def current_user(key: CurrentKey) -> str:
    return key.user_id


def reader(key: Annotated[ApiKey, Depends(Scoped("packs:read"))]) -> str:
    return key.user_id


def get_key_check(request: Request) -> KeyCheck:
    return from_state(request, "keys", KeyCheck)


def get_registry(request: Request) -> KeyRegistry:
    """The key registry, once read to its end (before that, a listing would miss keys)."""
    registry = from_state(request, "registry", KeyRegistry)
    if not registry.ready.is_set():
        raise not_ready("the key registry")
    return registry


SettingsDep = Annotated[Settings, Depends(get_settings)]
PublisherDep = Annotated[Publisher, Depends(get_publisher)]
LimiterDep = Annotated[RateLimiter, Depends(get_limiter)]
IdempotencyDep = Annotated[IdempotencyIndex, Depends(get_idempotency)]
ImagesDep = Annotated[ImageStore, Depends(get_images)]
UserDep = Annotated[str, Depends(current_user)]
WriterKey = Annotated[ApiKey, Depends(Scoped("packs:write"))]
ReaderDep = Annotated[str, Depends(reader)]  # the user of a key with packs:read
KeysKey = Annotated[ApiKey, Depends(Scoped("keys"))]
KeyCheckDep = Annotated[KeyCheck, Depends(get_key_check)]
RegistryDep = Annotated[KeyRegistry, Depends(get_registry)]
