"""`packline accounts keys`: a user's named API keys (list, create, revoke), as an operator
who holds the secret. The same keys are managed over HTTP at `/v1/keys`."""

from __future__ import annotations

import asyncio
import getpass
import json
import os
from datetime import datetime
from typing import Annotated, cast

import typer

from services.cli import kafka_io, operator
from shared.auth import SCOPES, Scope, make_named_key, new_key_id
from shared.events import KeyRevoked, NamedKeyCreated
from shared.kafka import Outgoing
from shared.keys import Registry, created_messages, registry_of, revoked_event, revoked_messages
from shared.revocations import Revocations
from shared.settings import CommonSettings
from shared.topics import AUTH_KEYS, AUTH_REVOCATIONS

app = typer.Typer(no_args_is_help=True, help="named API keys with scopes (several per user)")
Operator = Annotated[str, typer.Option("--operator", help="recorded on ops.audit without an operator key (default: the login name)")]


async def load(s: CommonSettings) -> tuple[Registry, Revocations]:
    """The registry and the revocations as they stand now (both topics read to their end)."""
    records = await kafka_io.read_events(s.kafka, s.topics.auth_keys, AUTH_KEYS.events)
    revocations = Revocations(s.kafka, s.topics.auth_revocations)
    for ev in await kafka_io.read_events(s.kafka, s.topics.auth_revocations, AUTH_REVOCATIONS.events):
        revocations.apply(ev)
    return registry_of(records), revocations


def operator_name(given: str, s: CommonSettings) -> str:
    """The holder of the operator key (PACKLINE_OPERATOR_KEY, verified) when one is set.
    Without it, --operator, else the login name: whoever holds the secret can act, as
    when the first operator key is made."""
    if os.environ.get(operator.KEY_ENV):
        return operator.verify(s, None).name
    if given:
        return given
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def generation_of(revocations: Revocations, user_id: str) -> int:
    """The generation of the user's current keys: 0, or the newest user-wide revocation's floor."""
    return revocations.min_generation.get(user_id, 0)


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%SZ") if value else "-"


@app.command("list")
def keys_list(user: str, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """USER's named keys, revoked ones included: id, name, scopes, created, last used, status."""
    s = CommonSettings()
    registry, revocations = asyncio.run(load(s))
    views = [registry.view(e, revocations) for e in registry.of_user(user)]
    if as_json:
        typer.echo(json.dumps(views, default=lambda v: v.isoformat(), indent=2))
        return
    if not views:
        typer.echo(f"{user} has no named keys")
    for v in views:
        status = f"revoked {_when(v['revoked_at'])}".rstrip(" -") if v["revoked"] else "active"
        typer.echo(f"{v['id']}  {v['name']!r}  {','.join(v['scopes'])}  created {_when(v['created_at'])}  "
                   f"last used {_when(v['last_used_at'])}  {status}")


def _scopes(values: list[str]) -> list[Scope]:
    unknown = [v for v in values if v not in SCOPES]
    if unknown:
        raise typer.BadParameter(f"unknown scope {unknown[0]!r}; choose from {', '.join(SCOPES)}")
    return [cast(Scope, v) for v in dict.fromkeys(values)]


@app.command("create")
def keys_create(
    user: str,
    name: Annotated[str, typer.Option("--name", help="what the key is for")],
    scope: Annotated[list[str], typer.Option("--scope", help=f"repeatable: {', '.join(SCOPES)}")],
    operator: Operator = "",
) -> None:
    """Make a named key for USER with the given scopes and print it on the last line (it is
    shown once). `ops` can only be granted here."""
    s = CommonSettings()
    scopes = _scopes(scope)
    _, revocations = asyncio.run(load(s))
    event = NamedKeyCreated(user_id=user, key_id=new_key_id(), name=name, scopes=scopes,
                            generation=generation_of(revocations, user), by=operator_name(operator, s))
    asyncio.run(send(s, created_messages(s.topics, event)))
    typer.echo(f"key {event.key_id} {event.name!r} of {user}: {', '.join(scopes)}")
    typer.echo(make_named_key(s.packline_secret, user, event.key_id, scopes, event.generation))


@app.command("revoke")
def keys_revoke(key_id: str, operator: Operator = "") -> None:
    """Revoke one named key (the api and the notifier refuse it within a second); the
    user's other keys stay valid."""
    s = CommonSettings()
    registry, revocations = asyncio.run(load(s))
    entry = registry.keys.get(key_id)
    if entry is None:
        typer.echo(f"no such key: {key_id}", err=True)
        raise typer.Exit(1)
    if not revocations.allows(entry.user_id, entry.generation, entry.key_id):
        typer.echo(f"key {key_id} of {entry.user_id} is already revoked")
        return
    asyncio.run(send(s, revoked_messages(s.topics, revoked_event(entry, by=operator_name(operator, s)))))
    typer.echo(f"revoked key {key_id} {entry.name!r} of {entry.user_id}")


def revoke_all_messages(s: CommonSettings, event: KeyRevoked) -> list[Outgoing]:
    """A user-wide revocation: the feed refuses the keys, the audit trail records it."""
    return [Outgoing.of(s.topics.auth_revocations, event, event.user_id),
            Outgoing.of(s.topics.ops_audit, event, event.by or "unknown")]


async def send(s: CommonSettings, messages: list[Outgoing]) -> None:
    async with kafka_io.open_publisher(s.kafka) as publisher:
        await publisher.send(messages)
