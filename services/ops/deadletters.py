"""Dead letters as operators see them, for `packline dlq` and the api's ops console alike:
every entry of images.dlq, invalid.dlq and webhooks.dlq with its replays counted from
ops.audit (`services.cli.redrive` reads the entries and says what a replay sends), the
filters of the console, and replaying a selection at a given rate."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable
from datetime import datetime

from services.cli import kafka_io
from services.cli.redrive import Entry, count_replays, entry_of, merge_copies, replay_messages
from shared.events import DlqReplayed
from shared.kafka import Outgoing, Publisher
from shared.settings import CommonSettings


async def load_entries(s: CommonSettings) -> list[Entry]:
    """Read to their current ends: the three dead-letter topics and ops.audit."""
    topics = ((s.topics.images_dlq, "dlq"), (s.topics.invalid_dlq, "invalid"), (s.topics.webhooks_dlq, "webhook"))
    *dead, replays = await asyncio.gather(  # each read is mostly waiting on the broker: all four at once
        *(kafka_io.read_all(s.kafka, topic) for topic, _ in topics),
        kafka_io.read_events(s.kafka, s.topics.ops_audit, (DlqReplayed,)),
    )
    entries = merge_copies([entry_of(r, short) for (_, short), records in zip(topics, dead, strict=True) for r in records])
    count_replays(entries, replays, s.dlq_max_replays)
    return entries


def user_of(e: Entry) -> str | None:
    """The user an entry concerns: the `user_id` of its message (image jobs, webhook
    deliveries, most commands), when it is JSON and has one."""
    try:
        body = json.loads(e.payload)
    except ValueError:
        return None
    user = body.get("user_id") if isinstance(body, dict) else None
    return user if isinstance(user, str) else None


def age_s(e: Entry, now: float) -> float | None:
    """Seconds since the message first failed; None when the entry does not say."""
    return now - datetime.fromisoformat(e.first_failed_at).timestamp() if e.first_failed_at else None


def matching(
    entries: Iterable[Entry], *, error_type: str | None = None, pack: str | None = None, user: str | None = None,
    max_age_s: float | None = None, now: float | None = None,
) -> list[Entry]:
    """The entries that pass every filter given; with `max_age_s`, entries of unknown age are left out."""
    now = time.time() if now is None else now
    out = []
    for e in entries:
        if error_type is not None and e.error_type != error_type:
            continue
        if pack is not None and e.pack_id != pack:
            continue
        if user is not None and user_of(e) != user:
            continue
        if max_age_s is not None and ((age := age_s(e, now)) is None or age > max_age_s):
            continue
        out.append(e)
    return out


async def send_replays(
    publisher: Publisher, s: CommonSettings, entries: list[Entry], record: DlqReplayed, rate: float,
    value: bytes | None = None, advance: Callable[[], None] = lambda: None,
) -> None:
    """Replay `entries` at `rate` per second, then keep `record` on ops.audit (after the
    replays: a record means they were sent). A dry run sends the record alone."""
    if not record.dry_run:
        for e in entries:
            started = time.monotonic()
            await publisher.send(replay_messages(s.topics, e, record.operator, value))
            advance()
            await asyncio.sleep(max(0.0, 1 / rate - (time.monotonic() - started)))
    await publisher.send([Outgoing.of(s.topics.ops_audit, record, record.operator)])
