"""What every HTTP edge shares: the Bearer API key check (signature and revocation), typed
access to what an app keeps in its state, and one /healthz + /metrics router (the api,
the notifier and the two workers all serve it)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from shared.auth import AuthError, verify_api_key
from shared.revocations import Revocations

T = TypeVar("T")


def from_state(request: Request, name: str, kind: type[T]) -> T:
    """`request.app.state.<name>`, checked to be what the app's wiring put there."""
    value = getattr(request.app.state, name, None)
    if not isinstance(value, kind):
        raise RuntimeError(f"app.state.{name} is not a {kind.__name__}: the app's wiring is incomplete")
    return value


def unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


@dataclass(frozen=True)
class KeyCheck:
    """What verifying an API key needs; the app's wiring puts one in `app.state.keys`."""

    secret: str
    revocations: Revocations


@dataclass(frozen=True)
class ApiKey:
    user_id: str
    generation: int


def bearer_key(request: Request) -> ApiKey | None:
    """The request's Bearer API key, verified and not revoked; None when it has none.
    A bad, forged or revoked key is a 401."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    check = from_state(request, "keys", KeyCheck)
    try:
        user_id, generation = verify_api_key(check.secret, token.strip())
    except AuthError as exc:
        raise unauthorized(str(exc)) from exc
    if not check.revocations.allows(user_id, generation):
        raise unauthorized("API key revoked")
    return ApiKey(user_id, generation)


def required_key(key: Annotated[ApiKey | None, Depends(bearer_key)]) -> ApiKey:
    if key is None:
        raise unauthorized("missing bearer API key")
    return key


OptionalKey = Annotated[ApiKey | None, Depends(bearer_key)]
CurrentKey = Annotated[ApiKey, Depends(required_key)]


def health_router(service: str, status: Callable[[], dict[str, Any]] | None = None) -> APIRouter:
    """/healthz answers 200 when `status()` says "ok" (the default), 503 while it says
    anything else (e.g. "starting" until a read model has caught up); /metrics is
    Prometheus' text format."""
    router = APIRouter()

    @router.get("/healthz")
    async def healthz() -> JSONResponse:
        body = {"status": "ok", "service": service, **(status() if status else {})}
        return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)

    @router.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return router
