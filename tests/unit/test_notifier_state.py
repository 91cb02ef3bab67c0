"""The notifier's store: sequence numbers, deduplication, resume windows."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator

from services.notifier.frames import Frame
from services.notifier.state import Store
from services.notifier.streams import parse_cursor, user_events
from shared.events import ImageEntry, ImageStatus, PackStatus

PACK = uuid.uuid4()


def status(s: str, eid: str) -> PackStatus:
    return PackStatus(event_id=eid, pack_id=PACK, user_id="alice", status=s, cost=2,
                      images=[ImageEntry(image_id="main", kind="main")] if s == "PROCESSING" else None)


def image(s: str, eid: str) -> ImageStatus:
    return ImageStatus(event_id=eid, pack_id=PACK, user_id="alice", image=ImageEntry(image_id="main", kind="main", status=s))


def test_sequence_is_per_pack_and_duplicates_are_skipped() -> None:
    store = Store(history_limit=100)
    for ev in (status("DRAFT", "1"), status("DRAFT", "1"), status("PROCESSING", "2"), image("GENERATING", "3"), image("GENERATING", "3")):
        store.apply(ev)
    pack = store.packs[str(PACK)]
    assert pack.seq == 3 and [r.event for r in pack.history] == ["pack", "pack", "image"]
    assert pack.after(1) == list(pack.history)[1:]
    assert pack.after(3) == [] and pack.after(99) is None


def test_history_window_bounds_resume() -> None:
    store = Store(history_limit=2)
    for ev in (status("DRAFT", "a"), status("PROCESSING", "b"), image("GENERATING", "c"), image("COMPLETED", "d")):
        store.apply(ev)
    pack = store.packs[str(PACK)]
    assert pack.after(2) is not None and pack.after(1) is None  # id 2 is just before the kept window


def test_another_user_cannot_write_into_a_pack() -> None:
    store = Store(history_limit=10)
    store.apply(status("DRAFT", "a"))
    intruder = PackStatus(event_id="z", pack_id=PACK, user_id="mallory", status="COMPLETED")
    store.apply(intruder)
    assert store.packs[str(PACK)].status == "DRAFT"


def test_an_image_event_reopens_a_terminal_pack() -> None:
    store = Store(history_limit=10)
    store.apply(status("FAILED", "a"))
    store.apply(image("GENERATING", "b"))
    assert store.packs[str(PACK)].status == "PROCESSING"


# --- the all-packs stream: cursors over packs.status positions ---------------------------

OTHER = uuid.uuid4()


def on(pack: uuid.UUID, s: str, eid: str) -> PackStatus:
    return PackStatus(event_id=eid, pack_id=pack, user_id="alice", status=s, cost=2)


def feed(store: Store, records: list[tuple[int, int, PackStatus]]) -> None:
    for partition, offset, ev in records:
        store.at(partition, offset)
        store.apply(ev)


class Listener:
    """A client of the stream: its events as they come, read in rounds."""

    def __init__(self, stream: AsyncIterator[Frame]) -> None:
        self.events: list[Frame] = []
        self.read = 0
        self.task = asyncio.create_task(self._listen(stream))

    async def _listen(self, stream: AsyncIterator[Frame]) -> None:
        async for event in stream:
            self.events.append(event)

    async def new(self) -> list[Frame]:
        await asyncio.sleep(0.05)  # the stream runs on this loop: let it catch up
        out, self.read = self.events[self.read:], len(self.events)
        return out


async def test_all_packs_stream_resumes_after_its_last_id_with_no_gap_and_no_duplicate() -> None:
    store = Store(history_limit=100)
    feed(store, [(0, 0, on(PACK, "DRAFT", "a1")), (1, 0, on(OTHER, "DRAFT", "b1"))])
    first = Listener(user_events(store, "alice", None))
    opening = await first.new()
    assert [e.event for e in opening] == ["pack", "pack"]  # a snapshot of each pack first
    feed(store, [(0, 1, on(PACK, "PROCESSING", "a2")), (1, 1, on(OTHER, "PROCESSING", "b2"))])
    live = await first.new()
    assert [json.loads(e.data)["status"] for e in live] == ["PROCESSING", "PROCESSING"]
    dropped_after = live[0].id  # the client saw one event, then the connection dropped

    feed(store, [(1, 2, on(OTHER, "COMPLETED", "b3")), (0, 2, on(PACK, "COMPLETED", "a3"))])
    resumed = await Listener(user_events(store, "alice", dropped_after)).new()
    got = [(json.loads(e.data)["pack_id"], json.loads(e.data)["status"]) for e in resumed]
    assert got == [(str(PACK), "COMPLETED"), (str(OTHER), "PROCESSING"), (str(OTHER), "COMPLETED")]
    assert parse_cursor(resumed[-1].id) == {0: 4, 1: 4}  # offset 2, first event of its record


async def test_an_id_that_cannot_be_resumed_gets_snapshots_and_a_resync() -> None:
    store = Store(history_limit=1)
    feed(store, [(0, i, on(PACK, s, f"e{i}")) for i, s in enumerate(["DRAFT", "PROCESSING", "COMPLETED"])])
    stale = await Listener(user_events(store, "alice", "c0:0")).new()  # offset 0 is no longer kept
    assert [e.event for e in stale] == ["pack", "resync"] and json.loads(stale[0].data)["status"] == "COMPLETED"
    garbage = await Listener(user_events(store, "alice", "not-a-cursor")).new()
    assert [e.event for e in garbage] == ["pack", "resync"]
    assert parse_cursor("c0:-5") is None and parse_cursor("x") is None and parse_cursor("c") == {}
