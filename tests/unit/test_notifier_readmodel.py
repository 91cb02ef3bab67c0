"""The notifier's read model: what a restart finds (snapshots, sequence numbers, the
checkpoint), idempotent re-reading after the checkpoint, bounded memory, packs served
from the file, histories re-read (here from a list standing in for Kafka)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from services.notifier.consumer import replay
from services.notifier.frames import Frame
from services.notifier.readmodel import ReadModel
from services.notifier.state import PackView, Store
from services.notifier.streams import format_cursor, pack_events, user_events
from shared.events import Decoder, ImageEntry, ImageStatus, PackStatus, stable_id
from shared.topics import PACKS_STATUS, PackFeed

KINDS = ("main", "lifestyle")
DECODE = Decoder(PACKS_STATUS.events)  # the general decoder: the feed's own must agree with it


def pack_history(pack: uuid.UUID, user: str = "alice") -> list[PackFeed]:
    """A two-image pack, DRAFT to COMPLETED, as credits and generation publish it."""
    images = [ImageEntry(image_id=k, kind=k) for k in KINDS]
    events: list[PackFeed] = [
        PackStatus(event_id=stable_id(pack, "DRAFT"), pack_id=pack, user_id=user, status="DRAFT", cost=2, images=images),
        PackStatus(event_id=stable_id(pack, "PROCESSING"), pack_id=pack, user_id=user, status="PROCESSING", cost=2,
                   charged=2, images=images),
    ]
    done = []
    for k in KINDS:
        events.append(ImageStatus(event_id=stable_id(pack, k, "GENERATING"), pack_id=pack, user_id=user,
                                  image=ImageEntry(image_id=k, kind=k, status="GENERATING", attempts=1)))
        entry = ImageEntry(image_id=k, kind=k, status="COMPLETED" if k == "main" else "FAILED", attempts=1,
                           url=f"http://api/v1/images/{pack}/{k}" if k == "main" else None)
        done.append(entry)
        events.append(ImageStatus(event_id=stable_id(pack, k, entry.status), pack_id=pack, user_id=user, image=entry))
    events.append(PackStatus(event_id=stable_id(pack, "PARTIAL"), pack_id=pack, user_id=user, status="PARTIAL", cost=2,
                             charged=1, refunded=1, images=done))
    return events


class Log:
    """packs.status in miniature: one partition's records, by offset."""

    def __init__(self) -> None:
        self.records: list[bytes] = []

    def append(self, *events: PackFeed) -> None:
        self.records += [e.encode() for e in events]

    def feed(self, store: Store, start: int = 0, stop: int | None = None) -> None:
        for offset in range(start, len(self.records) if stop is None else stop):
            store.at(0, offset)
            store.apply(DECODE(self.records[offset]))


class LogSource:
    """A HistorySource reading the log above (in place of Kafka); `gone`: offsets deleted."""

    def __init__(self, log: Log, history_limit: int, gone: int = 0) -> None:
        self.log, self.history_limit, self.gone = log, history_limit, gone

    async def restore(self, pack: PackView) -> bool:
        offsets = list(pack.offsets or ())
        if not offsets or offsets[0] < self.gone:
            return False
        values: list[bytes | None] = [self.log.records[o] for o in offsets]
        return replay(pack, offsets, values, pack.seq, self.history_limit, DECODE)


def write(store: Store) -> None:
    assert store.model is not None
    rows, checkpoint = store.take_changes()
    store.model.write(rows, checkpoint)
    store.evict()


def model(tmp_path: Path) -> ReadModel:
    return ReadModel(tmp_path / "notifier.db", "packs.status")


def view(pack: PackView) -> tuple[object, ...]:
    return (pack.snapshot(), pack.seq, pack.last_offset, pack.last_position, pack.offsets, pack.seen)


def test_a_restart_finds_every_pack_and_numbers_on_from_the_stored_seq(tmp_path: Path) -> None:
    log, live, done = Log(), uuid.uuid4(), uuid.uuid4()
    log.append(*pack_history(done))
    log.append(*pack_history(live)[:3])
    store = Store(100, model(tmp_path))
    log.feed(store)
    write(store)
    store.model and store.model.close()

    restarted = Store(100, model(tmp_path), source=LogSource(log, 100))
    assert restarted.resume() == {0: len(log.records)}
    assert set(restarted.packs) == {str(live)}  # only the live pack is read at start
    old = restarted.get(str(done))
    assert old is not None and old.snapshot() == store.packs[str(done)].snapshot()
    assert (old.status, old.cost, old.charged, old.refunded) == ("PARTIAL", 2, 1, 1)
    log.append(*pack_history(live)[3:])
    log.feed(restarted, start=len(log.records) - 4)
    log.feed(store, start=len(log.records) - 4)
    assert view(restarted.packs[str(live)]) == view(store.packs[str(live)])  # seq 4, 5, ... not 1, 2, ...
    assert restarted.packs[str(live)].seq == 7


def test_a_kill_after_any_write_restarts_consistent(tmp_path: Path) -> None:
    """Snapshots and checkpoint are written together; whatever was applied after the last
    write is read again from the checkpoint (and some records before it, which the pack's
    offset skips): the result is what an uninterrupted notifier has, record for record."""
    log = Log()
    packs = [uuid.uuid4() for _ in range(4)]
    histories = [pack_history(p) for p in packs]
    for i in range(len(histories[0])):  # interleaved, as in a busy partition
        log.append(*(h[i] for h in histories))
    reference = Store(100)
    log.feed(reference)
    for cut in (0, 5, 17, 27):
        path = tmp_path / f"cut{cut}"
        path.mkdir()
        crashed = Store(100, model(path))
        log.feed(crashed, stop=cut)
        write(crashed)
        log.feed(crashed, start=cut, stop=min(cut + 7, len(log.records)))  # applied, never written: the kill comes here
        restarted = Store(100, model(path))
        checkpoint = restarted.resume()
        assert checkpoint == ({0: cut} if cut else {})
        log.feed(restarted, start=max(0, cut - 6))  # a few records before the checkpoint too
        for p in packs:
            pack = restarted.get(str(p))
            assert pack is not None and view(pack) == view(reference.packs[str(p)])


def test_memory_holds_live_packs_and_a_bounded_cache_of_finished_ones(tmp_path: Path) -> None:
    log = Log()
    finished = [uuid.uuid4() for _ in range(5)]
    for p in finished:
        log.append(*pack_history(p))
    live = uuid.uuid4()
    log.append(*pack_history(live)[:2])
    store = Store(100, model(tmp_path), cache_packs=2)
    log.feed(store)
    assert store.evict() == 0  # nothing leaves memory before it is written
    assert len(store.packs) == 6
    write(store)
    assert set(store.packs) == {str(live), str(finished[3]), str(finished[4])}
    assert store.get(str(finished[0])) is not None and len(store.packs) == 4  # loaded on demand
    write(store)
    assert set(store.packs) == {str(live), str(finished[4]), str(finished[0])}  # least recently used out


def test_a_late_repeat_is_skipped_even_after_the_pack_left_memory(tmp_path: Path) -> None:
    log, p = Log(), uuid.uuid4()
    history = pack_history(p)
    log.append(*history)
    store = Store(100, model(tmp_path), cache_packs=0)
    log.feed(store)
    write(store)
    assert not store.packs
    log.append(history[-1], history[3])  # credits and generation publishing again after a crash
    log.feed(store, start=len(history))
    pack = store.get(str(p))
    assert pack is not None and pack.seq == len(history) and pack.status == "PARTIAL"


async def test_a_history_memory_lost_is_re_read_identically_while_the_log_has_it(tmp_path: Path) -> None:
    log, p = Log(), uuid.uuid4()
    log.append(*pack_history(p))
    live = Store(100)
    log.feed(live)
    everything = [(e.id, e.event, e.data) async for e in pack_events(live.packs[str(p)], "0")]

    store = Store(100, model(tmp_path), cache_packs=0, source=LogSource(log, 100))
    store.render = False  # catching up at start: nothing rendered
    log.feed(store)
    write(store)
    pack = store.get(str(p))
    assert pack is not None and not pack.history and pack.source is not None
    resumed = [(e.id, e.event, e.data) async for e in pack_events(pack, "3")]
    assert resumed == everything[3:]

    # Once the records are gone (retention), the snapshot and a resync.
    gone = Store(100, model(tmp_path), source=LogSource(log, 100, gone=1))
    old = gone.get(str(p))
    assert old is not None
    events = [e async for e in pack_events(old, "3")]
    assert [e.event for e in events] == ["pack", "resync"]
    assert json.loads(events[0].data)["charged"] == 1 and events[0].id == str(len(everything))
    assert [e.event async for e in pack_events(old, str(old.seq))] == []  # up to date: nothing, the end


async def opening(stream: AsyncIterator[Frame]) -> list[Frame]:
    """What a stream sends before it waits for news."""
    got: list[Frame] = []

    async def listen() -> None:
        async for event in stream:
            got.append(event)

    task = asyncio.create_task(listen())
    await asyncio.sleep(0.05)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return got


async def test_the_all_packs_stream_lists_and_resumes_packs_memory_let_go(tmp_path: Path) -> None:
    log = Log()
    mine = sorted(str(uuid.uuid4()) for _ in range(3))
    for p in mine:
        log.append(*pack_history(uuid.UUID(p)))
    log.append(*pack_history(uuid.uuid4(), user="bob"))
    reference = Store(100)
    log.feed(reference)
    store = Store(100, model(tmp_path), cache_packs=0, source=LogSource(log, 100))
    log.feed(store)
    write(store)
    assert not store.packs

    fresh = await opening(user_events(store, "alice", None))
    assert [(e.event, json.loads(e.data)["pack_id"]) for e in fresh] == [("pack", p) for p in mine]
    assert [json.loads(e.data)["charged"] for e in fresh] == [1, 1, 1]

    # A client that saw everything up to the first pack's end resumes: the other two packs'
    # events follow in log order, re-read from the log, with no resync.
    seen_until = {0: (len(log.records) // 4) * 2 - 2}  # the first pack's last event
    resumed = await opening(user_events(store, "alice", format_cursor(seen_until)))
    expected = sorted((r for p in mine[1:] for r in reference.packs[p].history), key=lambda r: r.position)
    assert [(e.event, e.data) for e in resumed] == [(r.event, r.data) for r in expected]

    # With the records gone: a snapshot of each pack changed since, and a resync naming them.
    gone = Store(100, model(tmp_path), cache_packs=0, source=LogSource(log, 100, gone=len(log.records)))
    stale = await opening(user_events(gone, "alice", format_cursor(seen_until)))
    assert [e.event for e in stale] == ["pack", "pack", "resync"]
    assert json.loads(stale[-1].data)["packs"] == mine[1:]


def test_the_feed_decodes_like_the_general_decoder() -> None:
    from services.notifier.consumer import FeedDecoder
    from shared.errors import InvalidMessage

    fast = FeedDecoder()
    valid = [e.encode() for e in pack_history(uuid.uuid4())]
    spaced = json.dumps(json.loads(valid[0]), indent=1).encode()  # another producer's whitespace
    for raw in [*valid, spaced]:
        assert fast(raw) == DECODE(raw)
    for bad in (b"{", b'{"type":"pack.status","version":1}', b'{"type":"pack.status","version":9}', None,
                valid[0].replace(b'"cost":2', b'"cost":"lots"')):
        for decoder in (fast, DECODE):
            try:
                decoder(bad)
            except InvalidMessage as exc:
                reasons = str(exc)
            else:
                raise AssertionError(f"{bad!r} decoded")
        assert reasons
