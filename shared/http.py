"""What every HTTP edge shares: the Bearer API key check (signature, revocation, and
readiness: fail closed until the revocations are read), the scope check (`Scoped`), typed
access to what an app keeps in its state, and one /healthz + /metrics router (the api,
the notifier and the two workers all serve it)."""

from __future__ import annotations

import gc
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar, overload

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from shared.auth import AuthError, KeyClaims, Keyring, Scope
from shared.keys import KeyUsage
from shared.revocations import Revocations

T = TypeVar("T")
ApiKey = KeyClaims  # a verified, unrevoked API key: user, generation, key id (None: account key), scopes
RETRY_AFTER_S = 1


def from_state(request: Request, name: str, kind: type[T]) -> T:
    """`request.app.state.<name>`, checked to be what the app's wiring put there."""
    value = getattr(request.app.state, name, None)
    if not isinstance(value, kind):
        raise RuntimeError(f"app.state.{name} is not a {kind.__name__}: the app's wiring is incomplete")
    return value


def unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


def not_ready(what: str = "the key revocations") -> HTTPException:
    """Fail closed: before the revocation feed is read to its end, a revoked key cannot be told apart."""
    return HTTPException(503, f"not ready: still reading {what}", headers={"Retry-After": str(RETRY_AFTER_S)})


@dataclass(frozen=True)
class KeyCheck:
    """What verifying an API key needs; the app's wiring puts one in `app.state.keys`."""

    keyring: Keyring
    revocations: Revocations
    usage: KeyUsage | None = None  # reports last use and keys of retiring secrets

    def admit(self, user_id: str, generation: int, key_id: str | None) -> None:
        """503 until the revocations are known, 401 if this key (or the key behind a stream
        token) is revoked."""
        if not self.revocations.ready.is_set():
            raise not_ready()
        if not self.revocations.allows(user_id, generation, key_id):
            raise unauthorized("API key revoked")

    def bearer(self, authorization: str) -> ApiKey | None:
        """The key of an `Authorization` header's value, verified and not revoked; None
        when it names no Bearer key. A bad, forged or revoked key is a 401; any key before
        the revocations are read, a 503."""
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        if not self.revocations.ready.is_set():
            raise not_ready()
        try:
            key = self.keyring.verify_key(token.strip())
        except AuthError as exc:
            raise unauthorized(str(exc)) from exc
        self.admit(key.user_id, key.generation, key.key_id)
        if self.usage is not None:
            self.usage.seen(key)
        return key


async def bearer_key(request: Request) -> ApiKey | None:
    """The request's Bearer API key (`KeyCheck.bearer`). (Async: it runs on the event loop,
    where the revocations change and usage is reported.)"""
    authorization = request.headers.get("authorization", "")
    if not authorization:
        return None
    return from_state(request, "keys", KeyCheck).bearer(authorization)


async def required_key(key: Annotated[ApiKey | None, Depends(bearer_key)]) -> ApiKey:
    if key is None:
        raise unauthorized("missing bearer API key")
    return key


def unprocessable(loc: list[str], msg: str) -> HTTPException:
    """A 422 decided by the service, in the shape of FastAPI's own validation errors (the
    one the OpenAPI spec documents for 422), so clients read every 422 the same way."""
    return HTTPException(422, [{"loc": loc, "msg": msg, "type": "value_error"}])


def lacks_scope(scope: str) -> HTTPException:
    return HTTPException(403, f"API key lacks scope {scope}")


@overload
def Scoped(scope: Scope, optional: Literal[False] = False) -> Callable[..., Awaitable[ApiKey]]: ...
@overload
def Scoped(scope: Scope, optional: Literal[True]) -> Callable[..., Awaitable[ApiKey | None]]: ...
def Scoped(scope: Scope, optional: bool = False) -> Callable[..., Awaitable[ApiKey | None]]:
    """The dependency of an endpoint that needs `scope`: the caller's API key if it holds
    it, else 403 naming the scope (401 without a valid key, 503 before the revocations are
    read). With `optional`, no Bearer key at all is None (the endpoint takes a stream
    token instead): `Annotated[ApiKey, Depends(Scoped("packs:write"))]`."""

    async def scoped(key: Annotated[ApiKey | None, Depends(bearer_key)]) -> ApiKey | None:
        if key is None:
            if optional:
                return None
            raise unauthorized("missing bearer API key")
        if not key.has(scope):
            raise lacks_scope(scope)
        return key

    scoped.__name__ = f"scoped_{scope.replace(':', '_')}{'_optional' if optional else ''}"
    return scoped


OptionalKey = Annotated[ApiKey | None, Depends(bearer_key)]
CurrentKey = Annotated[ApiKey, Depends(required_key)]


def collect_less_often() -> None:
    """For the edges (api, notifier), called as they start. Thousands of open streams are
    hundreds of thousands of long-lived objects, which the cyclic collector walks again and
    again: with the default thresholds (700, 10, 10) a full collection, some 200-400 ms with
    5,000 streams, comes every few tens of thousands of allocations, often right as an
    event fans out; in the api, a 200 ms one stalled every request in flight during a
    burst. Young collections every 20,000 allocations (a few ms), the middle one every
    40,000 (its pause is what survived since: while 5,000 streams connected, the 250,000
    allocations of (50,000, 5) made it 65-73 ms, in the way of the next events), full ones
    at most every 2 million (and, as always, only once a quarter of the old generation is
    new) find the same garbage with far fewer walks over the living (reference counting
    frees everything else as before). What exists by now (modules, the app, settings) is
    frozen out of the collector's walks: it lives as long as the process."""
    gc.freeze()
    gc.set_threshold(20_000, 2, 50)


def health_router(service: str, status: Callable[[], dict[str, Any]] | None = None) -> APIRouter:
    """/healthz answers 200 when `status()` says "ok" (the default), 503 while it says
    anything else (e.g. "starting" until a read model has caught up); it names the process
    (`pid`) so a supervisor knows the answer is its own child's. /metrics is Prometheus'
    text format."""
    router = APIRouter()

    @router.get("/healthz")
    async def healthz() -> JSONResponse:
        body = {"status": "ok", "service": service, "pid": os.getpid(), **(status() if status else {})}
        return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)

    @router.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return router
