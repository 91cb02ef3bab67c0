"""Who an operator is: the holder of an API key with the `ops` scope (`packline accounts
keys create OPERATOR --name ... --scope ops`), verified here against the deployment's
secrets and revocations, as the api verifies keys. The identity recorded on ops.audit is
the key's user id (and key id), never a name typed on the command line."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass

import typer

from services.cli import kafka_io
from shared.auth import AuthError, KeyClaims
from shared.revocations import Revocations
from shared.settings import CommonSettings
from shared.topics import AUTH_REVOCATIONS

KEY_ENV = "PACKLINE_OPERATOR_KEY"
HOW = f"give an operator key: --key or {KEY_ENV} (one with the ops scope: packline accounts keys create NAME --name ... --scope ops)"


@dataclass(frozen=True)
class Operator:
    name: str  # the key's user id
    key_id: str | None


async def _revoked(s: CommonSettings, claims: KeyClaims) -> bool:
    revocations = Revocations(s.kafka, s.topics.auth_revocations)
    for ev in await kafka_io.read_events(s.kafka, s.topics.auth_revocations, AUTH_REVOCATIONS.events):
        revocations.apply(ev)
    return not revocations.allows(claims.user_id, claims.generation, claims.key_id)


def verify(s: CommonSettings, key: str | None) -> Operator:
    """The operator the key names; exit 2 with one line when there is none, or it is not one."""
    key = key or os.environ.get(KEY_ENV, "")
    if not key:
        typer.echo(f"packline: an operator is needed: {HOW}", err=True)
        raise typer.Exit(2)
    try:
        claims = s.keyring.verify_key(key.strip())
    except AuthError as exc:
        typer.echo(f"packline: operator key refused: {exc}", err=True)
        raise typer.Exit(2) from exc
    if not claims.has("ops"):
        typer.echo(f"packline: the key of {claims.user_id} has no ops scope; {HOW}", err=True)
        raise typer.Exit(2)
    if asyncio.run(_revoked(s, claims)):
        typer.echo(f"packline: the operator key of {claims.user_id} is revoked", err=True)
        raise typer.Exit(2)
    return Operator(claims.user_id, claims.key_id)
