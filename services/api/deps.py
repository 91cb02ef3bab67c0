"""Request dependencies: settings, the authenticated user, the publisher."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request

from services.api.settings import Settings
from shared.auth import AuthError, verify_api_key
from shared.kafka import Publisher


def get_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def get_publisher(request: Request) -> Publisher:
    return request.app.state.publisher  # type: ignore[no-any-return]


def bearer_token(request: Request) -> str:
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HTTPException(401, "missing bearer API key", headers={"WWW-Authenticate": "Bearer"})
    return token.strip()


def current_user(request: Request, settings: Annotated[Settings, Depends(get_settings)]) -> str:
    try:
        user_id, generation = verify_api_key(settings.packline_secret, bearer_token(request))
    except AuthError as exc:
        raise HTTPException(401, str(exc), headers={"WWW-Authenticate": "Bearer"}) from exc
    if not request.app.state.revocations.allows(user_id, generation):
        raise HTTPException(401, "API key revoked", headers={"WWW-Authenticate": "Bearer"})
    return user_id


SettingsDep = Annotated[Settings, Depends(get_settings)]
PublisherDep = Annotated[Publisher, Depends(get_publisher)]
UserDep = Annotated[str, Depends(current_user)]
