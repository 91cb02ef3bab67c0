"""The notifier's view of packs: a snapshot, a per-pack sequence and a bounded history of
rendered SSE events per pack.

Every event about a pack sits in one partition of `packs.status` (key pack_id), so
applying them in log order, skipping repeated event ids, gives the same sequence numbers
on every notifier instance and after every restart: that is what makes Last-Event-ID
resume work across restarts.

Each rendered event also keeps its place in the log: (partition, position), position =
offset * 2 + its index among the events one record renders (at most two). That place is
the same everywhere too, so a vector of them resumes the all-packs stream (`Cursor`).

Memory holds the live packs (not terminal) and at most `cache_packs` finished ones, least
recently used first out; every pack is in the read model (`readmodel.py`), from which a
pack not in memory is loaded when asked for or when an event about it comes. Each pack
keeps the ids of its events applied (hashed) and the offsets of its records: a repeated
event is skipped however late, a record read again after a restart is skipped by its
offset, and a history that memory no longer holds can be re-read from Kafka
(`HistorySource`) while Kafka still has it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from services.notifier import frames
from services.notifier.readmodel import ReadModel, StoredPack, pack_ints, snapshot_json, unpack_ints
from services.notifier.wake import Recent, Signal
from shared.events import ImageEntry, PackState, PackStatus
from shared.topics import PackFeed

Cursor = dict[int, int]  # packs.status partition -> last position delivered
# A pack's history can be re-read from Kafka while it has at most this many records (a
# six-image pack has about 15); past it, a resume older than memory's window is a resync.
OFFSETS_KEPT = 1000


class HistorySource(Protocol):
    async def restore(self, pack: PackView) -> bool:
        """Re-read the pack's events and fill its `history`; False when they are gone."""


@dataclass(slots=True)
class Rendered:
    seq: int
    event: str  # "pack" or "image"
    body: bytes  # its `event:` and `data:` lines (JSON, as it was at that point in the stream), encoded once for every stream
    partition: int = -1
    position: int = -1
    framed: bytes | None = None  # with its pack-stream id line, made when first streamed

    @property
    def data(self) -> str:
        return frames.data_of(self.body)

    def pack_frame(self) -> bytes:
        """The event as a pack's stream sends it (its id is its sequence number): the same
        bytes for every stream of the pack, made once."""
        if self.framed is None:
            self.framed = b"id: %d\r\n%b" % (self.seq, self.body)
        return self.framed


@dataclass(slots=True)
class PackView:
    pack_id: str
    user_id: str
    created_at: datetime
    status: PackState = PackState.DRAFT
    cost: int = 0
    charged: int = 0
    refunded: int = 0
    reason: str | None = None
    updated_at: datetime | None = None
    images: dict[str, dict[str, Any] | ImageEntry] = field(default_factory=dict)  # as JSON once rendered
    seq: int = 0
    history: deque[Rendered] = field(default_factory=deque)
    partition: int = -1
    trimmed: int = -1  # position of the newest event no longer in `history`
    seen: set[int] = field(default_factory=set)  # hashes of the event ids applied
    changed: Signal = field(default_factory=Signal)
    last_offset: int = -1  # the last record of `partition` applied to this pack
    last_position: int = -1  # the position of its newest event
    offsets: list[int] | None = field(default_factory=list)  # its records, in order; None: too many to re-read
    source: HistorySource | None = None  # set while `history` lacks events Kafka may still hold

    @property
    def terminal(self) -> bool:
        return self.status.terminal

    def snapshot(self) -> dict[str, Any]:
        return {
            "pack_id": self.pack_id, "user_id": self.user_id, "status": self.status, "cost": self.cost,
            "charged": self.charged, "refunded": self.refunded, "reason": self.reason,
            "created_at": self.created_at.isoformat(), "updated_at": (self.updated_at or self.created_at).isoformat(),
            "images": [self.image(image_id) for image_id in self.images], "seq": self.seq,
        }

    def image(self, image_id: str) -> dict[str, Any]:
        """An image's entry as JSON (an entry is kept as it came until it is first rendered:
        catching up applies many more entries than it renders)."""
        entry = self.images[image_id]
        if isinstance(entry, ImageEntry):
            entry = self.images[image_id] = entry.model_dump(mode="json")
        return entry

    def after(self, last_seq: int) -> list[Rendered] | None:
        """Events after `last_seq`, or None when that id cannot be resumed from."""
        if last_seq == self.seq:
            return []
        if last_seq == self.seq - 1 and self.history and self.history[-1].seq == self.seq:
            return [self.history[-1]]  # a live stream, one event behind: the usual case
        if last_seq > self.seq or not self.history or last_seq < self.history[0].seq - 1:
            return None
        fresh = []
        for r in reversed(self.history):  # from the newest: a live stream wants the last one or two
            if r.seq <= last_seq:
                break
            fresh.append(r)
        fresh.reverse()
        return fresh

    def restored(self, history: deque[Rendered], trimmed: int, upto: int, limit: int) -> None:
        """Its history re-read up to sequence number `upto`; events rendered since then stay."""
        newer = [r for r in self.history if r.seq > upto]
        if newer and newer[0].seq != upto + 1:
            return  # more events came meanwhile than the window keeps: nothing to add
        merged = deque(history)
        merged.extend(newer)
        while len(merged) > limit:
            trimmed = merged.popleft().position
        self.history, self.trimmed, self.source = merged, trimmed, None


def event_key(event_id: str) -> int:
    """An event id in 8 bytes: what a pack remembers of each event it applied."""
    return int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=8).digest(), "little", signed=True)


class Store:
    """`model` None: everything stays in memory (tests, and re-reading one pack's history)."""

    def __init__(
        self, history_limit: int, model: ReadModel | None = None, cache_packs: int = 10_000,
        source: HistorySource | None = None,
    ) -> None:
        self.history_limit = history_limit
        self.model, self.cache_packs, self.source = model, cache_packs, source
        self.packs: dict[str, PackView] = {}  # live packs, and the finished ones in `finished`
        self.finished: OrderedDict[str, None] = OrderedDict()  # finished packs in memory, least recently used first
        self.dirty: set[str] = set()  # packs changed since they were last handed to the read model
        self.by_user: dict[str, set[str]] = {}  # of the packs in memory
        self.user_changed: dict[str, Signal] = {}
        self.recent = Recent()  # which packs of a user changed lately, for the user's streams
        self.pack_appeared = asyncio.Event()
        self.applied: dict[int, int] = {}  # partition -> next offset to apply
        # Render each event for streams. Off while catching up at start (nobody is served
        # yet): only the state and the numbering move, and a history is re-read when asked for.
        self.render = True
        self._at = (-1, -1)  # the record being applied: (partition, offset)
        self._rendered = 0

    def cursor(self) -> Cursor:
        """Where the store stands: everything applied so far, as a cursor."""
        return {p: offset * 2 - 1 for p, offset in self.applied.items()}

    def at(self, partition: int, offset: int) -> None:
        """The next `apply` is of this record of packs.status."""
        self.applied[partition] = offset + 1
        self._at, self._rendered = (partition, offset), 0

    # --- memory and the read model ----------------------------------------------------
    def resume(self) -> dict[int, int]:
        """At start: the live packs into memory, and the checkpoint (partition -> next
        offset) the feed goes on from."""
        self.packs, self.finished, self.by_user, self.dirty = {}, OrderedDict(), {}, set()
        if self.model is None:
            return {}
        for row in self.model.live():
            self._keep(self._from_row(row))
        self.applied = self.model.checkpoint()
        return dict(self.applied)

    def get(self, pack_id: str) -> PackView | None:
        """The pack, from memory or else from the read model (then kept in memory)."""
        pack = self.packs.get(pack_id)
        if pack is not None:
            if pack_id in self.finished:
                self.finished.move_to_end(pack_id)
            return pack
        if self.model is None:
            return None
        row = self.model.load(pack_id)
        if row is None:
            return None
        pack = self._from_row(row)
        self._keep(pack)
        return pack

    def _keep(self, pack: PackView) -> None:
        self.packs[pack.pack_id] = pack
        self.by_user.setdefault(pack.user_id, set()).add(pack.pack_id)
        if pack.terminal:
            self.finished[pack.pack_id] = None

    def _drop(self, pack_id: str) -> None:
        pack = self.packs.pop(pack_id)
        self.finished.pop(pack_id, None)
        self.recent.forget(pack.user_id, pack_id)
        mine = self.by_user.get(pack.user_id)
        if mine is not None:
            mine.discard(pack_id)
            if not mine:
                del self.by_user[pack.user_id]

    def take_changes(self) -> tuple[list[StoredPack], dict[int, int]]:
        """The packs changed since the last call, and the checkpoint that covers them:
        one consistent cut, to be written in one transaction."""
        rows = [self._row(self.packs[pack_id]) for pack_id in self.dirty]
        self.dirty = set()
        return rows, dict(self.applied)

    def not_written(self, rows: list[StoredPack]) -> None:
        """A write failed: those packs are to be written again."""
        self.dirty.update(r.pack_id for r in rows)

    def evict(self) -> int:
        """Forget the least recently used finished packs past `cache_packs` (only packs
        whose state is in the read model: call it when no write is under way). While
        catching up nobody asks for them: every finished pack written goes."""
        if self.model is None:
            return 0
        excess = len(self.finished) - (self.cache_packs if self.render else 0)
        victims: list[str] = []
        if excess > 0:
            for pack_id in self.finished:
                if pack_id not in self.dirty:
                    victims.append(pack_id)
                    if len(victims) == excess:
                        break
        for pack_id in victims:
            self._drop(pack_id)
        return len(victims)

    def _row(self, pack: PackView) -> StoredPack:
        snap = pack.snapshot()
        return StoredPack(
            pack.pack_id, pack.user_id, pack.status.value, not pack.terminal, snap["created_at"], snap["updated_at"],
            pack.seq, pack.partition, pack.last_offset, pack.last_position, snapshot_json(snap), pack_ints(sorted(pack.seen)),
            None if pack.offsets is None else pack_ints(pack.offsets),
        )

    def _from_row(self, row: StoredPack) -> PackView:
        snap = json.loads(row.snapshot)
        offsets = None if row.offsets is None else unpack_ints(row.offsets)
        return PackView(
            pack_id=row.pack_id, user_id=row.user_id, created_at=datetime.fromisoformat(snap["created_at"]),
            status=PackState(row.status), cost=snap["cost"], charged=snap["charged"], refunded=snap["refunded"],
            reason=snap["reason"], updated_at=datetime.fromisoformat(snap["updated_at"]),
            images={image["image_id"]: image for image in snap["images"]}, seq=row.seq, partition=row.partition,
            trimmed=row.last_position, seen=set(unpack_ints(row.seen)), last_offset=row.last_offset,
            last_position=row.last_position, offsets=offsets, source=self.source if offsets else None,
        )

    # --- applying packs.status ----------------------------------------------------------
    def apply(self, ev: PackFeed) -> PackView | None:
        pack_id = str(ev.pack_id)
        partition, offset = self._at
        pack = self.get(pack_id)
        if pack is None:
            pack = PackView(pack_id=pack_id, user_id=ev.user_id, created_at=ev.occurred_at, partition=partition)
            self._keep(pack)
            appeared, self.pack_appeared = self.pack_appeared, asyncio.Event()  # waiters hold the old one
            appeared.set()
        elif partition == pack.partition and 0 <= offset <= pack.last_offset:
            return None  # this record is already applied (read again after a restart)
        key = event_key(ev.event_id)
        if key in pack.seen or ev.user_id != pack.user_id:
            return None
        pack.seen.add(key)
        if partition == pack.partition and offset >= 0:
            pack.last_offset = offset
            if pack.offsets is not None:
                pack.offsets.append(offset)
                if len(pack.offsets) > OFFSETS_KEPT:
                    pack.offsets = None
        else:
            pack.offsets = None  # its records are in two partitions (more partitions since): not re-readable
        if pack.status == PackState.CANCELLED:
            # Final: an image's GENERATING or COMPLETED that lands after the cancel in the log
            # was not delivered, and must not reopen the pack.
            self.dirty.add(pack_id)
            return None
        pack.updated_at = ev.occurred_at
        if isinstance(ev, PackStatus):
            pack.status, pack.cost, pack.charged, pack.refunded, pack.reason = (
                ev.status, ev.cost, ev.charged, ev.refunded, ev.reason,
            )
            if ev.status.terminal and ev.images is not None:
                pack.images.clear()  # the ledger's final word: a REJECTED pack has no images
            for entry in ev.images or ():
                pack.images[entry.image_id] = entry
            self._record(pack, "pack", pack.snapshot)
        else:
            image_id = ev.image.image_id
            pack.images[image_id] = ev.image
            if pack.terminal and not ev.image.status.finished:
                # A replayed image reopens its pack, even before credits says so.
                pack.status = PackState.PROCESSING
                self._record(pack, "pack", pack.snapshot)
            self._record(pack, "image", lambda: {**pack.image(image_id), "pack_id": pack_id})
        self.dirty.add(pack_id)
        if pack.terminal:
            self.finished[pack_id] = None
            self.finished.move_to_end(pack_id)
        else:
            self.finished.pop(pack_id, None)
        return pack

    def _record(self, pack: PackView, name: str, render: Callable[[], dict[str, Any]]) -> None:
        pack.seq += 1
        partition, offset = self._at
        position = offset * 2 + self._rendered
        self._rendered += 1
        pack.last_position = position
        if not self.render:
            pack.history.clear()
            pack.trimmed = position
            pack.source = self.source if pack.offsets else None
            return
        data = render()
        data["seq"] = pack.seq
        pack.history.append(Rendered(pack.seq, name, frames.body(name, json.dumps(data, default=str)), partition, position))
        while len(pack.history) > self.history_limit:
            pack.trimmed = pack.history.popleft().position
        self._wake(pack)

    # --- streams ------------------------------------------------------------------------
    def _wake(self, pack: PackView) -> None:
        # The fresh signals are in place before the old ones fire: a stream that takes the
        # change at once, without waking (sse.py), follows the fresh one.
        fired, pack.changed = pack.changed, Signal()
        self.recent.touch(pack.user_id, pack.pack_id)
        user = self.user_changed.get(pack.user_id)
        if user is not None:
            self.user_changed[pack.user_id] = Signal()
        fired.set()
        if user is not None:
            user.set()

    def wake_user(self, user_id: str) -> None:
        """Wake every stream of this user (its key was revoked: each stream checks its own)."""
        for pack_id in self.by_user.get(user_id, ()):
            self._wake(self.packs[pack_id])
        user = self.user_changed.get(user_id)
        if user is not None:  # also when the user has no pack yet
            self.user_changed[user_id] = Signal()
            user.set()

    def user_event(self, user_id: str) -> Signal:
        return self.user_changed.setdefault(user_id, Signal())

    async def wait_for_pack(self, pack_id: str, timeout: float) -> PackView | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        pack = self.get(pack_id)  # the read model is asked once: a new pack shows up in memory
        while pack is None:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            try:
                await asyncio.wait_for(self.pack_appeared.wait(), remaining)
            except TimeoutError:
                return None
            pack = self.packs.get(pack_id)
        return pack

    def user_page(self, user_id: str, after: str, limit: int) -> list[str]:
        """The user's pack ids (in memory or in the read model) greater than `after`, in
        order, at most `limit`: every pack of the user, page by page."""
        ids = {p for p in self.by_user.get(user_id, ()) if p > after}
        if self.model is not None:
            ids.update(self.model.user_page(user_id, after, limit))
        return sorted(ids)[:limit]

    def snapshot_of(self, pack_id: str) -> tuple[str, int, int] | None:
        """(snapshot JSON, partition, position of its newest event), from memory or else
        the read model, without keeping it in memory."""
        pack = self.packs.get(pack_id)
        if pack is not None:
            return snapshot_json(pack.snapshot()), pack.partition, pack.last_position
        return None if self.model is None else self.model.snapshot(pack_id)

    def changed_after(self, user_id: str, cursor: Cursor) -> list[str]:
        """The user's packs with an event past `cursor` that memory's histories do not hold."""
        stale = {p for p in self.by_user.get(user_id, ())
                 if self.packs[p].trimmed > cursor.get(self.packs[p].partition, -1)}
        if self.model is not None:
            stale.update(p for p in self.model.user_changed_after(user_id, cursor) if p not in self.packs)
        return sorted(stale)
