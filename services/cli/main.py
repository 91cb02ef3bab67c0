"""`packline`: the one entry point: services, accounts, packs, and operations.

Each command lives in its own module and knows nothing of this one; here they are
put together into the root app."""

from __future__ import annotations

from typing import Any

import typer

from services.cli import accounts, audit, credits, dlq, kafka, notifier, packs, reads, run, schemas, serve, topics

app = typer.Typer(
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, help="packline: marketplace image packs on Kafka"
)

# The order here is the order of `packline --help`.
for command in (serve.serve, audit.audit, packs.submit, packs.watch, packs.cancel, packs.regenerate, run.up, run.demo):
    app.command()(command)
for group, name in ((accounts.app, "accounts"), (credits.app, "credits"), (topics.app, "topics"),
                    (schemas.app, "schemas"), (kafka.app, "kafka"), (dlq.app, "dlq")):
    app.add_typer(group, name=name)
app.add_typer(notifier.app, name="notifier")
app.add_typer(reads.app, name="packs")


def main() -> Any:
    return app()
