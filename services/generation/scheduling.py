"""The pure parts of the image-job scheduler: who goes next, what may be committed, and how
fast the provider may be called. No Kafka and no clock of their own, so they are tested in
memory (tests/unit/test_scheduling.py); consumer.py wires them to the images.jobs consumer."""

from __future__ import annotations

import asyncio
import time
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

    def remove(self, drop: Callable[[T], bool]) -> int:
        """Forget queued jobs (those of partitions this process no longer owns)."""
        removed = 0
        for user in list(self._users):
            jobs = self._users[user]
            kept = deque(j for j in jobs if not drop(j))
            removed += len(jobs) - len(kept)
            if kept:
                self._users[user] = kept
            else:
                del self._users[user]
        self._size -= removed
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


class ProviderLimiter:
    """The global images-per-minute limit of the image provider (GCRA: evenly spaced calls,
    `burst` of them back to back at most).

    Several generation processes share the limit without talking to each other: each takes
    the fraction of it equal to its share of the images.jobs partitions, and the consumer
    group hands out every partition exactly once, so the shares add up to the whole."""

    def __init__(self, per_minute: float, burst: int = 1, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute, self.burst, self.clock = per_minute, max(1, burst), clock
        self.share = 1.0
        self._tat = 0.0  # theoretical arrival time of the next call

    def set_share(self, owned: int, total: int) -> None:
        # A process with no partitions may still finish a job it was running: give it the
        # smallest share rather than none.
        self.share = max(owned, 1) / max(total, 1)

    def reserve(self) -> float:
        """Take the next slot; returns how long to wait for it (0 = go now)."""
        if self.per_minute <= 0:
            return 0.0
        interval = 60.0 / (self.per_minute * self.share)
        now = self.clock()
        tat = max(self._tat, now)
        self._tat = tat + interval
        return max(0.0, tat - (self.burst - 1) * interval - now)

    async def acquire(self) -> None:
        wait = self.reserve()
        if wait > 0:
            await asyncio.sleep(wait)
