"""`packline`: the one entry point: services, accounts, packs, and operations."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from services.cli import kafka_io
from shared.auth import make_api_key
from shared.errors import InvalidMessage
from shared.events import (
    REGISTRY,
    AccountCreate,
    BalanceQuery,
    CreditsBalance,
    CreditsGrant,
    Event,
    KeyRevoked,
    decode,
    json_schema,
)
from shared.kafka import Outgoing, Publisher, ensure_topics
from shared.settings import ROOT, CommonSettings

app = typer.Typer(
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, help="packline: marketplace image packs on Kafka"
)
accounts = typer.Typer(no_args_is_help=True, help="user accounts")
credits = typer.Typer(no_args_is_help=True, help="credit balances")
topics = typer.Typer(no_args_is_help=True, help="Kafka topics")
schemas = typer.Typer(no_args_is_help=True, help="event JSON schemas")
kafka = typer.Typer(no_args_is_help=True, help="the local Kafka broker")
for sub, name in ((accounts, "accounts"), (credits, "credits"), (topics, "topics"),
                  (schemas, "schemas"), (kafka, "kafka")):
    app.add_typer(sub, name=name)

SERVICES = ("api", "notifier", "credits", "generation")


@app.command()
def serve(service: Annotated[str, typer.Argument(help="api | notifier | credits | generation")]) -> None:
    """Run one service in the foreground."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if service == "api":
        import uvicorn

        from services.api.app import create_app
        from services.api.settings import Settings as ApiSettings

        s = ApiSettings()
        uvicorn.run(create_app(s), host=s.api_host, port=s.api_port, loop="uvloop", http="httptools", log_level="warning")
    elif service == "notifier":
        import uvicorn

        from services.notifier.app import create_app as create_notifier
        from services.notifier.settings import Settings as NotifierSettings

        n = NotifierSettings()
        uvicorn.run(create_notifier(n), host=n.notifier_host, port=n.notifier_port, loop="uvloop", http="httptools",
                    log_level="warning", timeout_graceful_shutdown=3)
    elif service in ("credits", "generation"):
        import uvicorn

        common = CommonSettings()
        asyncio.run(ensure_topics(common.kafka_bootstrap_servers, common.topics, common.topic_partitions))
        if service == "credits":
            from services.credits.app import build
            from services.credits.settings import Settings as CreditsSettings

            c = CreditsSettings()
            worker, port = build(c), c.credits_port
        else:
            from services.generation.app import build as build_generation
            from services.generation.settings import Settings as GenerationSettings

            g = GenerationSettings()
            worker, port = build_generation(g), g.generation_port
        # The grace covers open /metrics requests; the workers' own stop (images in flight) is not cut short.
        uvicorn.run(worker, host="127.0.0.1", port=port, loop="uvloop", log_level="warning", timeout_graceful_shutdown=3)
    else:
        raise typer.BadParameter(f"unknown service {service!r}; choose one of {', '.join(SERVICES)}")


def _settings() -> CommonSettings:
    return CommonSettings()


def _credits_command(event: Event, user_id: str) -> CreditsBalance:
    s = _settings()
    reply = asyncio.run(kafka_io.request_reply(
        s.kafka_bootstrap_servers, Outgoing.of(s.topics.credits_commands, event, user_id), s.topics.credits_events,
        lambda e: isinstance(e, CreditsBalance) and e.command_id == event.event_id,
    ))
    assert isinstance(reply, CreditsBalance)
    if reply.error:
        typer.echo(f"error: {reply.error}", err=True)
        raise typer.Exit(1)
    return reply


@accounts.command("create")
def accounts_create(name: str, credits_: Annotated[int, typer.Option("--credits", min=0)] = 0) -> None:
    """Create an account (idempotent) and print its API key on the last line."""
    reply = _credits_command(AccountCreate(user_id=name, credits=credits_), name)
    typer.echo(f"account {name}: balance {reply.balance}")
    s = _settings()
    typer.echo(make_api_key(s.packline_secret, name, asyncio.run(_key_generation(s, name))))


@accounts.command("revoke-key")
def accounts_revoke_key(name: str) -> None:
    """Revoke every API key of NAME (api and notifier refuse them within a second) and
    print the replacement key on the last line."""
    s = _settings()
    current = asyncio.run(_key_generation(s, name))
    event = KeyRevoked(user_id=name, below_generation=current + 1)

    async def publish() -> None:
        publisher = Publisher(s.kafka_bootstrap_servers, "packline-cli")
        try:
            await publisher.send([Outgoing.of(s.topics.auth_revocations, event, name)])
        finally:
            await publisher.stop()

    asyncio.run(publish())
    typer.echo(f"revoked keys of {name} below generation {current + 1}")
    typer.echo(make_api_key(s.packline_secret, name, current + 1))


async def _key_generation(s: CommonSettings, user_id: str) -> int:
    """The generation of the user's current key: 0, or the newest revocation's floor."""
    generation = 0
    for r in await kafka_io.read_all(s.kafka_bootstrap_servers, s.topics.auth_revocations):
        try:
            ev = decode(r.value, (KeyRevoked,))
        except InvalidMessage:
            continue
        if isinstance(ev, KeyRevoked) and ev.user_id == user_id:
            generation = max(generation, ev.below_generation)
    return generation


@credits.command("grant")
def credits_grant(user: str, amount: int) -> None:
    reply = _credits_command(CreditsGrant(user_id=user, amount=amount), user)
    typer.echo(f"{user} balance: {reply.balance}")


@credits.command("balance")
def credits_balance(user: str) -> None:
    reply = _credits_command(BalanceQuery(user_id=user), user)
    typer.echo(f"{user} balance: {reply.balance}")


@topics.command("create")
def topics_create() -> None:
    s = _settings()
    asyncio.run(ensure_topics(s.kafka_bootstrap_servers, s.topics, s.topic_partitions))
    typer.echo("\n".join(s.topics.all()))


@schemas.command("export")
def schemas_export(out: Path = ROOT / "schemas") -> None:
    """Write schemas/<type>.v<version>.json from the event models."""
    out.mkdir(parents=True, exist_ok=True)
    for model in REGISTRY.values():
        path = out / f"{model.TYPE}.v{model.VERSION}.json"
        path.write_text(json.dumps(json_schema(model), indent=2, sort_keys=True) + "\n")
    typer.echo(f"wrote {len(REGISTRY)} schemas to {out}")


@kafka.command("start")
def kafka_start() -> None:
    from shared.devbroker import main as broker

    broker(["start"])


@kafka.command("stop")
def kafka_stop() -> None:
    from shared.devbroker import main as broker

    broker(["stop"])


def _register_more() -> None:
    from services.cli import audit, dlq, packs, run  # noqa: F401  (they add their commands to `app`)


def main() -> Any:
    _register_more()
    return app()

