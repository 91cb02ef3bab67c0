"""Replay counting and parking (`packline dlq`), on records built as the services write them."""

from __future__ import annotations

import uuid

import pytest
from aiokafka.structs import ConsumerRecord

from services.cli.redrive import Entry, count_replays, entry_of, merge_copies, replay_messages
from shared.events import DlqReplayed, ImageJob
from shared.kafka import failure_headers, header, invalid_message
from shared.retry import BadHeader, due_at
from shared.topics import Topics

T = Topics("x.")
PACK = uuid.uuid4()


def record(
    topic: str, partition: int, offset: int, value: bytes, headers: list[tuple[str, bytes]], key: bytes = b"k",
) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(topic, partition, offset, 0, 0, key, value, None, len(key), len(value), headers)


def dead_job(offset: int, image_id: str = "main", run: int = 0) -> Entry:
    job = ImageJob(pack_id=PACK, user_id="u1", image_id=image_id, kind="main", prompt="p", width=8, height=8, cost=1, run=run)
    hdrs = failure_headers(attempts=1, error="boom", error_type="PermanentImageError", original_topic=T.images_jobs,
                           first_failed_at_ms=None)
    return entry_of(record(T.images_dlq, 1, offset, job.encode(), hdrs), "dlq")


def replayed(*entries: str, dry_run: bool = False, who: str = "ops") -> DlqReplayed:
    return DlqReplayed(operator=who, entries=list(entries), pack_ids=[str(PACK)], dry_run=dry_run)


def test_an_image_replayed_max_times_that_failed_again_is_parked() -> None:
    lineage = [dead_job(o, run=r) for r, o in enumerate((3, 9, 14, 20))]
    other = dead_job(21, image_id="detail")
    entries = [*lineage, other]
    records = [replayed("dlq:1:3"), replayed("dlq:1:9"), replayed("dlq:1:9", dry_run=True), replayed("dlq:1:14", who="ana")]
    count_replays(entries, records, max_replays=3)
    assert [e.replays for e in lineage] == [1, 1, 1, 0]
    assert [e.lineage_replays for e in lineage] == [0, 1, 2, 3]
    assert [e.parked for e in entries] == [False, False, False, True, False]
    assert lineage[2].replayed_by == ["ana"]
    # One replay fewer: nothing is parked yet.
    entries = [dead_job(o) for o in (3, 9, 14, 20)]
    count_replays(entries, records[:2], max_replays=3)
    assert not any(e.parked for e in entries)


def test_invalid_entries_merge_by_origin_and_follow_their_replays() -> None:
    bad = [("x-due-at", b"soon"), ("x-attempts", b"2")]
    first = invalid_message(T, topic=T.retry(1), partition=0, offset=5, key=b"p", value=b"{}", reason="malformed x-due-at",
                            headers=bad, bad_header="x-due-at")
    r1 = record(T.invalid_dlq, 0, 0, first.value, first.headers, first.key)
    r2 = record(T.invalid_dlq, 2, 0, first.value, first.headers, first.key)  # another reader's copy
    entries = merge_copies([entry_of(r1, "invalid"), entry_of(r2, "invalid")])
    assert len(entries) == 1 and entries[0].copies == 2 and entries[0].bad_header == "x-due-at"
    [out] = replay_messages(T, entries[0], "ops")
    assert out.topic == T.retry(1) and out.key == b"p" and out.value == b"{}"
    assert header(out.headers, "x-due-at") is None and header(out.headers, "x-attempts") == "2"
    assert header(out.headers, "x-replayed-from") == "invalid:0:0"
    # Replayed and dead-lettered again (the replay's headers kept): the second one is its lineage.
    again = invalid_message(T, topic=T.retry(1), partition=0, offset=9, key=b"p", value=b"{}", reason="still bad",
                            headers=out.headers)
    e2 = entry_of(record(T.invalid_dlq, 0, 1, again.value, again.headers), "invalid")
    both = [entries[0], e2]
    count_replays(both, [replayed("invalid:0:0")], max_replays=1)
    assert e2.replayed_from == "invalid:0:0" and e2.lineage_replays == 1 and e2.parked and not entries[0].parked


@pytest.mark.parametrize(("raw", "due"), [(None, 0), (b"1700000000000", 1700000000000)])
def test_due_at(raw: bytes | None, due: int) -> None:
    assert due_at([] if raw is None else [("x-due-at", raw)]) == due


@pytest.mark.parametrize("raw", [b"soon", b"", b"1.5e12"])
def test_a_malformed_due_at_names_its_header(raw: bytes) -> None:
    with pytest.raises(BadHeader) as exc:
        due_at([("x-due-at", raw)])
    assert exc.value.header == "x-due-at"
