"""api logic: a validated request body becomes a pack.requested event. No I/O."""

from __future__ import annotations

import functools
import hashlib
import json
import uuid
from typing import Annotated, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared.events import APLUS_KINDS, LISTING_KINDS, AplusKind, ImageKind, ImageSpec, PackRequested, PackStatus, Product, stable_id
from shared.pricing import draft, pack_cost, plan_pack


class PackRequestBody(BaseModel):
    # Strict: `"aplus": 0` or `"images": "main"` are mistakes to report, not to guess at.
    model_config = ConfigDict(extra="forbid", strict=True)
    product: Product
    images: Annotated[list[ImageKind], Field(min_length=1, max_length=6)] | None = None
    # The A+ modules to add, each priced on its own; `true` means all four, `false` none.
    aplus: bool | Annotated[list[AplusKind], Field(max_length=4)] = False

    @field_validator("images")
    @classmethod
    def _unique(cls, images: list[str] | None) -> list[str] | None:
        if images is not None and len(set(images)) != len(images):
            raise ValueError("image kinds must not repeat")
        return images

    @field_validator("aplus")
    @classmethod
    def _unique_modules(cls, aplus: bool | list[str]) -> bool | list[str]:
        if isinstance(aplus, list) and len(set(aplus)) != len(aplus):
            raise ValueError("A+ modules must not repeat")
        return aplus

    def aplus_modules(self) -> list[AplusKind]:
        if isinstance(self.aplus, bool):
            return list(APLUS_KINDS) if self.aplus else []
        return self.aplus


class PackAccepted202(BaseModel):
    pack_id: str
    status: str = "DRAFT"
    cost: int
    status_url: str
    stream_url: str
    stream_token: str


def request_hash(body: PackRequestBody) -> str:
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def pack_id_for(user_id: str, idempotency_key: str | None) -> str:
    """With a key, the pack id is a function of (user, key): a retried POST names the same
    pack, and credits charges a pack id once, even across api restarts and instances."""
    if idempotency_key is None:
        return str(uuid.uuid4())
    return stable_id("idempotency", user_id, idempotency_key)


class Request(NamedTuple):
    event: PackRequested
    cost: int
    body_hash: str
    draft: PackStatus  # published with the request: the pack is visible at once


def build_request(
    user_id: str, body: PackRequestBody, idempotency_key: str | None, price_listing: int, price_aplus: int,
) -> Request:
    images = body.images or list(LISTING_KINDS)
    digest = request_hash(body)
    event = PackRequested(
        pack_id=pack_id_for(user_id, idempotency_key), user_id=user_id, product=body.product,
        images=images, aplus=body.aplus_modules(), idempotency_key=idempotency_key, request_hash=digest, source="api",
    )
    specs = _plan(tuple(images), tuple(event.aplus), price_listing, price_aplus)
    return Request(event, pack_cost(specs), digest, draft(event, specs))


@functools.lru_cache(maxsize=1024)
def _plan(images: tuple[str, ...], aplus: tuple[str, ...], price_listing: int, price_aplus: int) -> tuple[ImageSpec, ...]:
    """`plan_pack`, once per distinct choice of images: there are few, and every request makes one."""
    return tuple(plan_pack(images, aplus, price_listing, price_aplus))
