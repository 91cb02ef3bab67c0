"""What `packline dlq` knows about dead letters: the entries of images.dlq and invalid.dlq,
how often each was replayed (from the `dlq.replayed` records on ops.audit), which are
parked, and the messages a replay sends.

An image's dead letters form a lineage: a replayed job that fails again is dead-lettered
again, as a new entry of the same image. An entry is *parked* once the entries before it
in its lineage were replayed `max_replays` times: it is listed apart and replayed only on
purpose (`--force`). An invalid.dlq entry's lineage follows `x-replayed-from`, which a
replay puts on the message and a new dead letter keeps among the original headers."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from aiokafka.structs import ConsumerRecord

from services.notifier.webhooks.handlers import replayed
from shared.errors import InvalidMessage
from shared.events import DlqReplayed, ImageReplayed, decode, stable_id
from shared.kafka import Headers, Outgoing, header, original_headers
from shared.topics import IMAGES_DLQ, WEBHOOKS_DLQ, Topics

REPLAY_HEADERS = ("x-replayed-from", "x-replayed-by")


@dataclass
class Entry:
    id: str
    topic: str
    pack_id: str | None
    image_id: str | None
    original_topic: str | None
    error_type: str | None
    error: str | None
    attempts: int | None
    first_failed_at: str | None
    replayable: bool
    payload: str
    value: bytes = field(default=b"", repr=False)  # the message as it was, byte for byte
    original_partition: int | None = None
    original_offset: int | None = None
    bad_header: str | None = None
    key: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)  # of the original message (invalid.dlq)
    copies: int = 1  # the same origin dead-lettered by several readers (invalid.dlq)
    replays: int = 0  # replays of this entry (dry runs not counted)
    replayed_by: list[str] = field(default_factory=list)
    lineage_replays: int = 0  # replays of the entries before it in its lineage
    parked: bool = False

    @property
    def kind(self) -> str:
        return self.id.split(":", 1)[0]

    @property
    def replayed_from(self) -> str | None:
        return next((v for k, v in self.headers if k == "x-replayed-from"), None)


def _int(value: str | None) -> int | None:
    return int(value) if value and value.lstrip("-").isdigit() else None


def entry_of(r: ConsumerRecord[bytes, bytes], short: str) -> Entry:
    pack_id = image_id = None
    replayable = False
    original_topic = header(r.headers, "x-original-topic")
    if short == "dlq":
        try:
            job = decode(r.value, IMAGES_DLQ.events)
            pack_id, image_id, replayable = str(job.pack_id), job.image_id, True
        except InvalidMessage:
            pass
    elif short == "webhook":  # webhooks.dlq: `image_id` is the webhook-id, what the receiver knows it by
        try:
            delivery = decode(r.value, WEBHOOKS_DLQ.events)
            pack_id, image_id, replayable = str(delivery.pack_id), delivery.webhook_id, True
        except InvalidMessage:
            pass
    else:
        replayable = original_topic is not None
    first = _int(header(r.headers, "x-first-failed-at"))
    return Entry(
        id=f"{short}:{r.partition}:{r.offset}", topic=r.topic, pack_id=pack_id, image_id=image_id,
        original_topic=original_topic, error_type=header(r.headers, "x-error-type"), error=header(r.headers, "x-error"),
        attempts=_int(header(r.headers, "x-attempts")),
        first_failed_at=datetime.fromtimestamp(first / 1000, UTC).isoformat() if first is not None else None,
        replayable=replayable, payload=(r.value or b"").decode(errors="replace"), value=r.value or b"",
        original_partition=_int(header(r.headers, "x-original-partition")),
        original_offset=_int(header(r.headers, "x-original-offset")), bad_header=header(r.headers, "x-bad-header"),
        key=(r.key or b"").decode(errors="replace"),
        headers=[(k, v.decode(errors="replace")) for k, v in original_headers(r.headers)],
    )


def merge_copies(entries: Iterable[Entry]) -> list[Entry]:
    """One invalid.dlq entry per origin (topic, partition, offset): readers without a
    consumer group (every notifier, every api) each dead-letter what they cannot read."""
    out: list[Entry] = []
    first: dict[tuple[str, int, int], Entry] = {}
    for e in entries:
        if e.kind == "invalid" and e.original_topic and e.original_partition is not None and e.original_offset is not None:
            origin = (e.original_topic, e.original_partition, e.original_offset)
            if origin in first:
                first[origin].copies += 1
                continue
            first[origin] = e
        out.append(e)
    return out


def count_replays(entries: list[Entry], records: Iterable[DlqReplayed], max_replays: int) -> None:
    """Fill in replays, replayed_by, lineage_replays and parked."""
    by_id = {e.id: e for e in entries}
    for rec in records:
        if rec.dry_run:
            continue
        for entry_id in rec.entries:
            e = by_id.get(entry_id)
            if e is not None:
                e.replays += 1
                if rec.operator not in e.replayed_by:
                    e.replayed_by.append(rec.operator)
    images: dict[tuple[str, str], list[Entry]] = {}
    for e in entries:
        if e.kind == "dlq" and e.pack_id and e.image_id:
            images.setdefault((e.pack_id, e.image_id), []).append(e)
    for lineage in images.values():
        # One pack, one partition: offsets order the lineage.
        lineage.sort(key=lambda x: int(x.id.rsplit(":", 1)[1]))
        for i, e in enumerate(lineage):
            e.lineage_replays = sum(1 for before in lineage[:i] if before.replays)
    for e in entries:
        if e.kind == "invalid":
            seen, parent = {e.id}, by_id.get(e.replayed_from or "")
            while parent is not None and parent.id not in seen and parent.replays:
                e.lineage_replays += 1
                seen.add(parent.id)
                parent = by_id.get(parent.replayed_from or "")
    for e in entries:
        e.parked = e.replayable and not e.replays and e.lineage_replays >= max_replays


def replay_messages(t: Topics, e: Entry, operator: str, value: bytes | None = None) -> list[Outgoing]:
    """What replaying `e` sends. `value` replaces an invalid.dlq entry's message (a fixed copy)."""
    if e.kind == "invalid":
        return [_redeliver(e, operator, value)]
    if e.kind == "webhook":  # once more from its first attempt, under the same webhook-id
        return [replayed(decode(e.payload.encode(), WEBHOOKS_DLQ.events), e.id, operator, t)]
    job = decode(e.payload.encode(), IMAGES_DLQ.events)
    run = job.run + 1  # a function of the entry: replaying it twice names the same run
    reopened = ImageReplayed(
        event_id=stable_id(e.id, "replayed"), pack_id=job.pack_id, user_id=job.user_id, image_id=job.image_id,
        kind=job.kind, run=run, dlq_entry=e.id, operator=operator,
    )
    fresh = job.model_copy(update={"attempt": 1, "run": run, "event_id": stable_id(e.id, "replay-job")})
    headers: Headers = [("x-replayed-from", e.id.encode()), ("x-replayed-by", operator.encode())]
    # The image reopens (images.results) before its job exists.
    return [
        Outgoing.of(t.images_results, reopened, job.pack_id),
        Outgoing(t.images_jobs, fresh.encode(), str(job.pack_id).encode(), headers),
    ]


def _redeliver(e: Entry, operator: str, value: bytes | None) -> Outgoing:
    """The message back on its original topic, under its original key, with its original
    headers except the malformed one (the fix for a bad header is to drop it)."""
    assert e.original_topic is not None
    kept: Headers = [(k, v.encode()) for k, v in e.headers if k != e.bad_header and k not in REPLAY_HEADERS]
    kept += [("x-replayed-from", e.id.encode()), ("x-replayed-by", operator.encode())]
    return Outgoing(e.original_topic, value if value is not None else e.value, e.key.encode(), kept)
