"""`packline accounts`: create accounts, revoke API keys."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from services.cli import kafka_io
from services.cli.common import credits_command
from shared.auth import make_api_key
from shared.events import AccountCreate, KeyRevoked
from shared.kafka import Outgoing
from shared.settings import CommonSettings

app = typer.Typer(no_args_is_help=True, help="user accounts")


@app.command("create")
def accounts_create(name: str, credits_: Annotated[int, typer.Option("--credits", min=0)] = 0) -> None:
    """Create an account (idempotent) and print its API key on the last line."""
    reply = credits_command(AccountCreate(user_id=name, credits=credits_), name)
    typer.echo(f"account {name}: balance {reply.balance}")
    s = CommonSettings()
    typer.echo(make_api_key(s.packline_secret, name, asyncio.run(_key_generation(s, name))))


@app.command("revoke-key")
def accounts_revoke_key(name: str) -> None:
    """Revoke every API key of NAME (api and notifier refuse them within a second) and
    print the replacement key on the last line."""
    s = CommonSettings()
    current = asyncio.run(_key_generation(s, name))
    event = KeyRevoked(user_id=name, below_generation=current + 1)

    async def publish() -> None:
        async with kafka_io.open_publisher(s.kafka) as publisher:
            await publisher.send([Outgoing.of(s.topics.auth_revocations, event, name)])

    asyncio.run(publish())
    typer.echo(f"revoked keys of {name} below generation {current + 1}")
    typer.echo(make_api_key(s.packline_secret, name, current + 1))


async def _key_generation(s: CommonSettings, user_id: str) -> int:
    """The generation of the user's current key: 0, or the newest revocation's floor."""
    revocations = await kafka_io.read_events(s.kafka, s.topics.auth_revocations, (KeyRevoked,))
    return max([0, *(ev.below_generation for ev in revocations if ev.user_id == user_id)])
