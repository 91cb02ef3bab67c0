"""Request dependencies: settings, the publisher, the authenticated user."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from services.api.limits import IdempotencyIndex, RateLimiter
from services.api.settings import Settings
from shared.http import CurrentKey, from_state
from shared.images import ImageStore
from shared.kafka import Publisher


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


SettingsDep = Annotated[Settings, Depends(get_settings)]
PublisherDep = Annotated[Publisher, Depends(get_publisher)]
LimiterDep = Annotated[RateLimiter, Depends(get_limiter)]
IdempotencyDep = Annotated[IdempotencyIndex, Depends(get_idempotency)]
ImagesDep = Annotated[ImageStore, Depends(get_images)]
UserDep = Annotated[str, Depends(current_user)]
