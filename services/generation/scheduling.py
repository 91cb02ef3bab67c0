"""How fast the provider may be called: a pure limiter with an injectable clock, tested in
memory (tests/unit/test_scheduling.py). Who goes next and what may be committed are
`shared.fairness`; consumer.py wires all three to the images.jobs consumer. And the packs
whose jobs are not started any more (`CancelledPacks`, kept by jobs.py)."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable


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
        self._running = asyncio.Event()  # cleared while an operator has paused the provider
        self._running.set()
        self.held = 0  # calls waiting for a resume

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    def pause(self) -> None:
        """No call starts until `resume`; calls already started finish."""
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

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
        """Wait for the next slot, and for as long as the provider is paused: a pause that
        comes while waiting for a slot still holds the call back."""
        while True:
            if not self._running.is_set():
                self.held += 1
                try:
                    await self._running.wait()
                finally:
                    self.held -= 1
            wait = self.reserve()
            if wait > 0:
                await asyncio.sleep(wait)
            if self._running.is_set():
                return


class CancelledPacks:
    """The packs cancelled in the last `keep_s` (the cancel feed keeps a day): any job of
    theirs still queued or on a retry tier is at most that old."""

    def __init__(self, keep_s: float = 24 * 3600.0) -> None:
        self.keep_s = keep_s
        self._at: OrderedDict[str, float] = OrderedDict()

    def add(self, pack_id: str) -> None:
        now = time.monotonic()
        self._at[pack_id] = now
        self._at.move_to_end(pack_id)
        while self._at and next(iter(self._at.values())) < now - self.keep_s:
            self._at.popitem(last=False)

    def __contains__(self, pack_id: object) -> bool:
        return pack_id in self._at
