"""`packline accounts`: create accounts, revoke API keys; `accounts keys` manages named keys."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from services.cli import keys
from services.cli.common import credits_command
from shared.auth import make_api_key
from shared.events import AccountCreate, KeyRevoked
from shared.settings import CommonSettings

app = typer.Typer(no_args_is_help=True, help="user accounts")
app.add_typer(keys.app, name="keys")


@app.command("create")
def accounts_create(name: str, credits_: Annotated[int, typer.Option("--credits", min=0)] = 0) -> None:
    """Create an account (idempotent) and print its API key on the last line."""
    reply = credits_command(AccountCreate(user_id=name, credits=credits_), name)
    typer.echo(f"account {name}: balance {reply.balance}")
    s = CommonSettings()
    _, revocations = asyncio.run(keys.load(s))
    typer.echo(make_api_key(s.packline_secret, name, keys.generation_of(revocations, name)))


@app.command("revoke-key")
def accounts_revoke_key(name: str, operator: keys.Operator = "") -> None:
    """Revoke every API key of NAME, account and named keys alike (api and notifier refuse
    them within a second) and print the replacement account key on the last line."""
    s = CommonSettings()
    _, revocations = asyncio.run(keys.load(s))
    current = keys.generation_of(revocations, name)
    event = KeyRevoked(user_id=name, below_generation=current + 1, by=keys.operator_name(operator, s))
    asyncio.run(keys.send(s, keys.revoke_all_messages(s, event)))
    typer.echo(f"revoked keys of {name} below generation {current + 1}")
    typer.echo(make_api_key(s.packline_secret, name, current + 1))
