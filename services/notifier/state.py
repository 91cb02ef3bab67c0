"""The notifier's view of every pack: a snapshot, a per-pack sequence and a bounded
history of rendered SSE events, rebuilt from `packs.status` on start.

Every event about a pack sits in one partition of `packs.status` (key pack_id), so
applying them in log order, skipping repeated event ids, gives the same sequence numbers
on every notifier instance and after every restart: that is what makes Last-Event-ID
resume work across restarts.

Each rendered event also keeps its place in the log: (partition, position), position =
offset * 2 + its index among the events one record renders (at most two). That place is
the same everywhere too, so a vector of them resumes the all-packs stream (`Cursor`).
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shared.events import PackState, PackStatus
from shared.topics import PackFeed

Cursor = dict[int, int]  # packs.status partition -> last position delivered


@dataclass
class Rendered:
    seq: int
    event: str  # "pack" or "image"
    data: str  # JSON, as it was at that point in the stream
    partition: int = -1
    position: int = -1


@dataclass
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
    images: dict[str, dict[str, Any]] = field(default_factory=dict)
    seq: int = 0
    history: deque[Rendered] = field(default_factory=deque)
    partition: int = -1
    trimmed: int = -1  # position of the newest event no longer in `history`
    seen: set[str] = field(default_factory=set)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def terminal(self) -> bool:
        return self.status.terminal

    def snapshot(self) -> dict[str, Any]:
        return {
            "pack_id": self.pack_id, "user_id": self.user_id, "status": self.status, "cost": self.cost,
            "charged": self.charged, "refunded": self.refunded, "reason": self.reason,
            "created_at": self.created_at.isoformat(), "updated_at": (self.updated_at or self.created_at).isoformat(),
            "images": list(self.images.values()), "seq": self.seq,
        }

    def after(self, last_seq: int) -> list[Rendered] | None:
        """Events after `last_seq`, or None when that id cannot be resumed from."""
        if last_seq == self.seq:
            return []
        if last_seq > self.seq or not self.history or last_seq < self.history[0].seq - 1:
            return None
        return [r for r in self.history if r.seq > last_seq]


class Store:
    def __init__(self, history_limit: int) -> None:
        self.history_limit = history_limit
        self.packs: dict[str, PackView] = {}
        self.by_user: dict[str, set[str]] = {}
        self.user_changed: dict[str, asyncio.Event] = {}
        self.pack_appeared = asyncio.Event()
        self.applied: dict[int, int] = {}  # partition -> next offset to apply
        self._at = (-1, -1)  # the record being applied: (partition, offset)
        self._rendered = 0

    def cursor(self) -> Cursor:
        """Where the store stands: everything applied so far, as a cursor."""
        return {p: offset * 2 - 1 for p, offset in self.applied.items()}

    def at(self, partition: int, offset: int) -> None:
        """The next `apply` is of this record of packs.status."""
        self.applied[partition] = offset + 1
        self._at, self._rendered = (partition, offset), 0

    def apply(self, ev: PackFeed) -> PackView | None:
        pack_id = str(ev.pack_id)
        pack = self.packs.get(pack_id)
        if pack is None:
            pack = PackView(pack_id=pack_id, user_id=ev.user_id, created_at=ev.occurred_at, partition=self._at[0])
            self.packs[pack_id] = pack
            self.by_user.setdefault(ev.user_id, set()).add(pack_id)
            self.pack_appeared = _renew(self.pack_appeared)
        if ev.event_id in pack.seen or ev.user_id != pack.user_id:
            return None
        pack.seen.add(ev.event_id)
        pack.updated_at = ev.occurred_at
        if isinstance(ev, PackStatus):
            pack.status, pack.cost, pack.charged, pack.refunded, pack.reason = (
                ev.status, ev.cost, ev.charged, ev.refunded, ev.reason,
            )
            for entry in ev.images or ():
                pack.images[entry.image_id] = entry.model_dump(mode="json")
            self._record(pack, "pack", pack.snapshot)
        else:
            image = ev.image.model_dump(mode="json")
            pack.images[ev.image.image_id] = image
            if pack.terminal and not ev.image.status.finished:
                # A replayed image reopens its pack, even before credits says so.
                pack.status = PackState.PROCESSING
                self._record(pack, "pack", pack.snapshot)
            self._record(pack, "image", lambda: {**image, "pack_id": pack_id})
        return pack

    def _record(self, pack: PackView, name: str, render: Any) -> None:
        pack.seq += 1
        data = render()
        data["seq"] = pack.seq
        partition, offset = self._at
        pack.history.append(Rendered(pack.seq, name, json.dumps(data, default=str), partition, offset * 2 + self._rendered))
        self._rendered += 1
        while len(pack.history) > self.history_limit:
            pack.trimmed = pack.history.popleft().position
        self._wake(pack)

    def _wake(self, pack: PackView) -> None:
        pack.changed = _renew(pack.changed)
        if pack.user_id in self.user_changed:
            self.user_changed[pack.user_id] = _renew(self.user_changed[pack.user_id])

    def wake_user(self, user_id: str) -> None:
        """Wake every stream of this user (its key was revoked: each stream checks its own)."""
        for pack_id in self.by_user.get(user_id, ()):
            self._wake(self.packs[pack_id])
        if user_id in self.user_changed:  # also when the user has no pack yet
            self.user_changed[user_id] = _renew(self.user_changed[user_id])

    def user_event(self, user_id: str) -> asyncio.Event:
        return self.user_changed.setdefault(user_id, asyncio.Event())

    async def wait_for_pack(self, pack_id: str, timeout: float) -> PackView | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (pack := self.packs.get(pack_id)) is None:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            try:
                await asyncio.wait_for(self.pack_appeared.wait(), remaining)
            except TimeoutError:
                return None
        return pack


def _renew(old: asyncio.Event) -> asyncio.Event:
    """Waiters hold the old Event; setting it wakes all of them at once (O(1) per change
    however many subscribers), and newcomers wait on the fresh one."""
    old.set()
    return asyncio.Event()
