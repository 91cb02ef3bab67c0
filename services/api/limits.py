"""Per-user token buckets (in memory, per api instance) and the Idempotency-Key index."""

from __future__ import annotations

import time
from collections import OrderedDict


class RateLimiter:
    def __init__(self, rate_per_s: float, burst: int, max_users: int = 100_000) -> None:
        self.rate, self.burst, self.max_users = rate_per_s, burst, max_users
        self.buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, user_id: str, now: float | None = None) -> float:
        """0 when allowed, else the seconds to wait before the next request may pass."""
        now = time.monotonic() if now is None else now
        tokens, last = self.buckets.pop(user_id, (float(self.burst), now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        wait = 0.0
        if tokens >= 1:
            tokens -= 1
        else:
            wait = (1 - tokens) / self.rate
        self.buckets[user_id] = (tokens, now)
        if len(self.buckets) > self.max_users:
            self.buckets.popitem(last=False)
        return wait


class IdempotencyIndex:
    """Remembers which request body a (user, key) was first used with, to answer 409 to a
    different body. The pack id itself is derived from (user, key), so charging stays
    exactly-once even where this index has forgotten (restart, another instance)."""

    def __init__(self, max_entries: int = 200_000) -> None:
        self.entries: OrderedDict[tuple[str, str], str] = OrderedDict()
        self.max_entries = max_entries

    def check(self, user_id: str, key: str, body_hash: str) -> bool:
        """True when the key is new or was used with this same body."""
        previous = self.entries.get((user_id, key))
        return previous is None or previous == body_hash

    def remember(self, user_id: str, key: str, body_hash: str) -> None:
        self.entries[(user_id, key)] = body_hash
        if len(self.entries) > self.max_entries:
            self.entries.popitem(last=False)
