"""Wake-ups for live streams. A `Signal` fires once (the store replaces a pack's or a
user's signal with a fresh one at every change), waking at once every stream waiting on
it: one call per change whatever the number of streams, and no copy of the event per
stream (each stream reads the shared history itself). A stream waits through its own
`Waiter`, which other causes may wake too (a keep-alive ping is due, the client left, the
server stops): one future per stream, no task per cause."""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable


class Wake(enum.Enum):
    CHANGED = "changed"  # the signal fired: there may be news
    PING = "ping"  # nothing written for a ping interval
    GONE = "gone"  # the client disconnected
    CLOSING = "closing"  # the server is stopping: end the stream cleanly


class Waiter:
    __slots__ = ("_future", "_signal", "on_change")

    def __init__(self) -> None:
        self._future: asyncio.Future[Wake] | None = None
        self._signal: Signal | None = None  # the signal it is registered with
        # Asked first when a change comes: True when it handled the change itself (and
        # followed the next signal), so the waiting task need not wake.
        self.on_change: Callable[[], bool] | None = None

    def wake(self, reason: Wake) -> None:
        """The first reason wins; later ones before the waiter runs are dropped (a change
        is not lost: the stream waits again on the same, already fired, signal)."""
        future = self._future
        if future is None or future.done():
            return
        if reason is Wake.CHANGED and self.on_change is not None and self.on_change():
            return
        future.set_result(reason)

    def follow(self, signal: Signal) -> None:
        """Wait on `signal` from now on (the one a change was handled for is spent)."""
        self._signal = signal
        signal.add(self)

    async def until(self, signal: Signal) -> Wake:
        self._future = asyncio.get_running_loop().create_future()
        try:
            self.follow(signal)
            return await self._future
        finally:
            if self._signal is not None:
                self._signal.discard(self)
            self._signal = self._future = None


class Signal:
    """Like a one-shot `asyncio.Event`, with any `Waiter` as a waiter. Small: every pack in
    memory has one, and most have nobody waiting."""

    __slots__ = ("_fired", "_waiters")

    def __init__(self) -> None:
        self._fired = False
        self._waiters: set[Waiter] | None = None

    def is_set(self) -> bool:
        return self._fired

    def set(self) -> None:
        self._fired = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            waiter.wake(Wake.CHANGED)

    def add(self, waiter: Waiter) -> None:
        if self._fired:
            waiter.wake(Wake.CHANGED)
        elif self._waiters is None:
            self._waiters = {waiter}
        else:
            self._waiters.add(waiter)

    def discard(self, waiter: Waiter) -> None:
        if self._waiters is not None:
            self._waiters.discard(waiter)

    async def wait(self) -> None:
        if not self._fired:
            await Waiter().until(self)


class Recent:
    """Per user, the packs in the order they last changed, each with a stamp that only
    grows: a user's stream asks for the packs changed since it last looked and visits only
    those, not every pack of the user in memory (a busy seller has hundreds)."""

    def __init__(self) -> None:
        self.stamp = 0
        self._by_user: dict[str, dict[str, int]] = {}  # user -> pack -> stamp, oldest change first

    def touch(self, user_id: str, pack_id: str) -> None:
        self.stamp += 1
        packs = self._by_user.setdefault(user_id, {})
        packs.pop(pack_id, None)  # to the end: dicts keep insertion order
        packs[pack_id] = self.stamp

    def forget(self, user_id: str, pack_id: str) -> None:
        packs = self._by_user.get(user_id)
        if packs is not None:
            packs.pop(pack_id, None)
            if not packs:
                del self._by_user[user_id]

    def since(self, user_id: str, stamp: int) -> list[str]:
        """The user's packs changed after `stamp` (most recent first)."""
        changed = []
        for pack_id, at in reversed((self._by_user.get(user_id) or {}).items()):
            if at <= stamp:
                break
            changed.append(pack_id)
        return changed
