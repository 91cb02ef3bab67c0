"""`packline kafka`: start and stop the local Kafka broker."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, help="the local Kafka broker")


@app.command("start")
def kafka_start() -> None:
    _broker("start")


@app.command("stop")
def kafka_stop() -> None:
    _broker("stop")


def _broker(action: str) -> None:
    from shared.devbroker import main as broker

    broker([action])
