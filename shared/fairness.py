"""Serving users in turn from a read-ahead buffer, and committing only what is done: the
two pure parts of every consumer that must not serve a topic in log order (credits' intake
of pack requests, generation's image jobs). No Kafka and no clock, so they are tested in
memory (tests/unit/test_scheduling.py)."""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Iterable
from typing import Generic, TypeVar

T = TypeVar("T")
P = TypeVar("P", bound=Hashable)


class FairQueue(Generic[T]):
    """Jobs waiting for a worker, served round-robin across users: each user's jobs in
    arrival order, users take turns. One user with 300 queued images and another with 6 get
    alternate workers, so the second does not wait behind the first's whole backlog."""

    def __init__(self) -> None:
        self._users: OrderedDict[str, deque[T]] = OrderedDict()
        self._size = 0
        self._nonempty = asyncio.Event()

    def __len__(self) -> int:
        return self._size

    @property
    def users(self) -> int:
        return len(self._users)

    def put(self, user: str, item: T) -> None:
        self._users.setdefault(user, deque()).append(item)
        self._size += 1
        self._nonempty.set()

    def pop(self) -> T | None:
        """The next user's oldest job; that user then goes to the back of the line."""
        if not self._users:
            return None
        user, jobs = next(iter(self._users.items()))
        item = jobs.popleft()
        self._size -= 1
        if jobs:
            self._users.move_to_end(user)
        else:
            del self._users[user]
        if not self._users:
            self._nonempty.clear()
        return item

    async def get(self) -> T:
        while True:
            item = self.pop()
            if item is not None:
                return item
            await self._nonempty.wait()

    def remove(self, drop: Callable[[T], bool]) -> list[T]:
        """Forget queued items (those of partitions this process no longer owns); returns them."""
        removed: list[T] = []
        for user in list(self._users):
            kept: deque[T] = deque()
            for item in self._users[user]:
                (removed if drop(item) else kept).append(item)
            if kept:
                self._users[user] = kept
            else:
                del self._users[user]
        self._size -= len(removed)
        if not self._users:
            self._nonempty.clear()
        return removed


class OffsetTracker(Generic[P]):
    """Per partition, the offset that may be committed: the oldest message still pending,
    or one past the last fetched when none is. Jobs finish out of order (a 2 s image after a
    60 s one); committing past a pending job would lose it if the process died."""

    def __init__(self) -> None:
        self._pending: dict[P, dict[int, None]] = {}  # insertion-ordered: fetched in offset order
        self._next: dict[P, int] = {}
        self._committed: dict[P, int] = {}

    def fetched(self, partition: P, offset: int) -> None:
        self._pending.setdefault(partition, {})[offset] = None
        self._next[partition] = offset + 1

    def done(self, partition: P, offset: int) -> None:
        pending = self._pending.get(partition)
        if pending is not None:
            pending.pop(offset, None)

    def pending(self) -> int:
        return sum(len(p) for p in self._pending.values())

    def committable(self, owned: Iterable[P] | None = None) -> dict[P, int]:
        """Offsets that moved since the last `committed`, for the partitions in `owned`."""
        wanted = self._next.keys() if owned is None else set(owned) & self._next.keys()
        out: dict[P, int] = {}
        for partition in wanted:
            pending = self._pending.get(partition)
            point = next(iter(pending)) if pending else self._next[partition]
            if point > self._committed.get(partition, -1):
                out[partition] = point
        return out

    def committed(self, offsets: dict[P, int]) -> None:
        self._committed.update(offsets)

    def forget(self, partitions: Iterable[P]) -> None:
        for partition in partitions:
            self._pending.pop(partition, None)
            self._next.pop(partition, None)
            self._committed.pop(partition, None)
