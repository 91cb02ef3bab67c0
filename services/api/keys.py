"""HTTP edge of key management: a user's named keys (`/v1/keys`, scope `keys`)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path
from pydantic import BaseModel, ConfigDict, Field, field_validator

from services.api.deps import KeyCheckDep, KeysKey, PublisherDep, RegistryDep, SettingsDep
from shared.auth import Scope, make_named_key, missing_scopes, new_key_id
from shared.errors import BrokerUnavailable
from shared.events import KeyName, NamedKeyCreated
from shared.http import lacks_scope
from shared.keys import created_messages, revoked_event, revoked_messages

router = APIRouter(prefix="/v1/keys")


class KeyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: KeyName
    scopes: Annotated[list[Scope], Field(min_length=1, max_length=5)]

    @field_validator("scopes")
    @classmethod
    def _unique(cls, scopes: list[Scope]) -> list[Scope]:
        if len(set(scopes)) != len(scopes):
            raise ValueError("scopes must not repeat")
        return scopes


class KeyView(BaseModel):
    id: str
    name: str
    scopes: list[Scope]
    created_at: datetime
    last_used_at: datetime | None
    revoked: bool
    revoked_at: datetime | None


class KeyCreated201(KeyView):
    key: str = Field(description="the key itself: shown once, in this answer only")


class KeyList(BaseModel):
    keys: list[KeyView]


@router.post("", status_code=201, response_model=KeyCreated201)
async def create_key(
    body: KeyRequest, key: KeysKey, settings: SettingsDep, publisher: PublisherDep, check: KeyCheckDep, registry: RegistryDep,
) -> KeyCreated201:
    """A new named key of the caller's user, with at most the caller's own scopes."""
    missing = missing_scopes(key.scopes, body.scopes)
    if missing:
        raise lacks_scope(missing[0])
    event = NamedKeyCreated(
        user_id=key.user_id, key_id=new_key_id(), name=body.name, scopes=body.scopes, generation=key.generation,
        by=f"user:{key.user_id}",
    )
    try:
        await publisher.send(created_messages(settings.topics, event))
    except BrokerUnavailable as exc:
        raise HTTPException(503, "the key registry is unavailable; no key was made, try again", headers={"Retry-After": "5"}) from exc
    registry.registry.apply(event)  # this instance lists it at once; the others within a poll
    secret = make_named_key(check.keyring.signing, key.user_id, event.key_id, body.scopes, key.generation)
    view = registry.registry.view(registry.registry.keys[event.key_id], check.revocations)
    return KeyCreated201(**view, key=secret)


@router.get("", response_model=KeyList)
async def list_keys(key: KeysKey, check: KeyCheckDep, registry: RegistryDep) -> KeyList:
    """The caller's user's named keys, revoked ones included, oldest first. (The account
    key, from `packline accounts create`, is not listed: `revoke-key` replaces it.)"""
    entries = registry.registry.of_user(key.user_id)
    return KeyList(keys=[KeyView(**registry.registry.view(e, check.revocations)) for e in entries])


@router.delete("/{key_id}", response_model=KeyView)
async def revoke_key(
    key_id: Annotated[str, Path(max_length=64)], key: KeysKey, settings: SettingsDep, publisher: PublisherDep,
    check: KeyCheckDep, registry: RegistryDep,
) -> KeyView:
    """Revoke one named key of the caller's user, for ever; the user's other keys stay valid."""
    entry = registry.registry.keys.get(key_id)
    if entry is None or entry.user_id != key.user_id:
        raise HTTPException(404, "no such key")
    if entry.revoked_at is None and key_id not in check.revocations.revoked_keys:
        event = revoked_event(entry, by=f"user:{key.user_id}")
        try:
            await publisher.send(revoked_messages(settings.topics, event))
        except BrokerUnavailable as exc:
            raise HTTPException(503, "the revocation feed is unavailable; the key is not revoked, try again",
                                headers={"Retry-After": "5"}) from exc
        registry.registry.apply(event)
        check.revocations.apply(event)  # refused here at once; everywhere within a poll
    return KeyView(**registry.registry.view(entry, check.revocations))
