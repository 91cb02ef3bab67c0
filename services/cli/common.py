"""What several `packline` commands share: a credits command and its reply, topic creation."""

from __future__ import annotations

import asyncio

import typer

from services.cli import kafka_io
from shared.admin import KafkaSetupError, TopicState, ensure_topics
from shared.events import CreditsBalance, Event
from shared.kafka import Outgoing
from shared.settings import CommonSettings


def credits_command(event: Event, user_id: str) -> CreditsBalance:
    """Send `event` to the credits service and wait for its reply; exit 1 on an error reply."""
    s = CommonSettings()
    reply = asyncio.run(kafka_io.request_reply(
        s.kafka, Outgoing.of(s.topics.credits_commands, event, user_id), s.topics.credits_events,
        CreditsBalance, lambda e: e.command_id == event.event_id,
    ))
    if reply.error:
        typer.echo(f"error: {reply.error}", err=True)
        raise typer.Exit(1)
    return reply


def create_topics(s: CommonSettings) -> list[TopicState]:
    """Every contract topic exists afterwards (idempotent). Settings the cluster refuses (a
    wrong password, an untrusted certificate) end the command with one line and exit 2."""
    try:
        return asyncio.run(ensure_topics(s))
    except KafkaSetupError as exc:
        typer.echo(f"packline: cannot use Kafka: {exc}", err=True)
        raise typer.Exit(2) from exc
