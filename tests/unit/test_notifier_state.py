"""The notifier's store: sequence numbers, deduplication, resume windows."""

from __future__ import annotations

import uuid

from services.notifier.state import Store
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
