"""`packline topics`: create the contract's Kafka topics."""

from __future__ import annotations

import typer

from services.cli.common import create_topics
from shared.settings import CommonSettings

app = typer.Typer(no_args_is_help=True, help="Kafka topics")


@app.command("create")
def topics_create() -> None:
    """Create every topic that does not exist yet; list them all with their replicas."""
    s = CommonSettings()
    states = create_topics(s)
    wanted = max((t.replicas for t in states if t.created), default=0) or s.kafka_replication_factor or 0
    for t in states:
        note = "created" if t.created else "exists"
        if wanted and t.replicas < wanted:
            note += f"; WARNING: {t.replicas} replicas, fewer than {wanted}"
        typer.echo(f"{t.name}  partitions={t.partitions} replicas={t.replicas}  {note}")
