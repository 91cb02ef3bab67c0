"""Request dependencies: settings, the publisher, the authenticated user and the scope
each endpoint needs, the key registry. All `async def`, though none awaits: FastAPI runs
a plain `def` dependency in a worker thread, a thread hop per dependency per request."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Annotated, Protocol, TypeVar

from fastapi import Depends, Request

from services.api.coordination import ApiInstances, IdempotencyFeed
from services.api.limits import RateLimiter
from services.api.settings import Settings
from shared.http import ApiKey, CurrentKey, KeyCheck, Scoped, from_state, not_ready
from shared.images import ImageStore
from shared.kafka import Publisher
from shared.keys import KeyRegistry


async def get_settings(request: Request) -> Settings:
    return from_state(request, "settings", Settings)


async def get_publisher(request: Request) -> Publisher:
    return from_state(request, "publisher", Publisher)


class _Follower(Protocol):
    ready: asyncio.Event


F = TypeVar("F", bound=_Follower)


def _caught_up(request: Request, name: str, kind: type[F], what: str) -> F:
    """`app.state.<name>`, a topic follower, once read to its end; 503 before."""
    follower = from_state(request, name, kind)
    if not follower.ready.is_set():
        raise not_ready(what)
    return follower


caught_up = _caught_up  # for the routers of other modules (services/api/webhooks.py)


async def get_limiter(request: Request) -> RateLimiter:
    return from_state(request, "limiter", RateLimiter)


async def get_idempotency(request: Request) -> IdempotencyFeed:
    """The idempotency index, once read to its end (before that, a key's first body is unknown)."""
    return _caught_up(request, "idempotency", IdempotencyFeed, "the idempotency keys")


async def get_instances(request: Request) -> ApiInstances:
    """The live api instances, once read to the end (before that, this instance's share is unknown)."""
    return _caught_up(request, "instances", ApiInstances, "the api instances")


async def get_images(request: Request) -> ImageStore:
    """The image store (shared/images.py: a directory or S3). Checked inline: from_state
    takes a concrete class, and ImageStore is the interface."""
    images = getattr(request.app.state, "images", None)
    if not isinstance(images, ImageStore):
        raise RuntimeError("app.state.images is not an ImageStore: the app's wiring is incomplete")
    return images


async def current_user(key: CurrentKey) -> str:
    return key.user_id


async def reader(key: Annotated[ApiKey, Depends(Scoped("packs:read"))]) -> str:
    return key.user_id


async def get_key_check(request: Request) -> KeyCheck:
    return from_state(request, "keys", KeyCheck)


async def get_registry(request: Request) -> KeyRegistry:
    """The key registry, once read to its end (before that, a listing would miss keys)."""
    return _caught_up(request, "registry", KeyRegistry, "the key registry")


@dataclass(frozen=True)
class PackIntake:
    """What `POST /v1/packs` needs, as one dependency: FastAPI's cost is per dependency,
    and this is the api's hottest path. Fails as the separate ones would, in their order."""

    settings: Settings
    publisher: Publisher
    limiter: RateLimiter
    idempotency: IdempotencyFeed
    instances: ApiInstances
    check: KeyCheck


async def get_pack_intake(request: Request) -> PackIntake:
    return PackIntake(
        await get_settings(request), await get_publisher(request), await get_limiter(request),
        await get_idempotency(request), await get_instances(request), await get_key_check(request),
    )


SettingsDep = Annotated[Settings, Depends(get_settings)]
PackIntakeDep = Annotated[PackIntake, Depends(get_pack_intake)]
PublisherDep = Annotated[Publisher, Depends(get_publisher)]
LimiterDep = Annotated[RateLimiter, Depends(get_limiter)]
IdempotencyDep = Annotated[IdempotencyFeed, Depends(get_idempotency)]
InstancesDep = Annotated[ApiInstances, Depends(get_instances)]
ImagesDep = Annotated[ImageStore, Depends(get_images)]
UserDep = Annotated[str, Depends(current_user)]
WriterKey = Annotated[ApiKey, Depends(Scoped("packs:write"))]
ReaderDep = Annotated[str, Depends(reader)]  # the user of a key with packs:read
KeysKey = Annotated[ApiKey, Depends(Scoped("keys"))]
KeyCheckDep = Annotated[KeyCheck, Depends(get_key_check)]
RegistryDep = Annotated[KeyRegistry, Depends(get_registry)]
