"""The per-user rate limit (a token bucket per user, the deployment's limit shared out
between the live api instances) and the Idempotency-Key index (which body each key was
first used with, as the log `api.idempotency` says: the same on every api instance)."""

from __future__ import annotations

import time
from collections import OrderedDict

from shared.events import IdempotencyClaimed


class RateLimiter:
    """`rate_per_s` and `burst` are the limit of the whole deployment. Each call says which
    share of it this instance holds (1 / the live api instances): behind a proxy that spreads
    requests evenly, the instances' buckets add up to the deployment's."""

    def __init__(self, rate_per_s: float, burst: int, max_users: int = 100_000) -> None:
        self.rate, self.burst, self.max_users = rate_per_s, burst, max_users
        self.buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, user_id: str, now: float | None = None, share: float = 1.0) -> float:
        """0 when allowed, else the seconds to wait before the next request may pass."""
        now = time.monotonic() if now is None else now
        rate, burst = self.rate * share, max(1.0, self.burst * share)
        tokens, last = self.buckets.pop(user_id, (burst, now))
        tokens = min(burst, tokens + (now - last) * rate)
        wait = 0.0
        if tokens >= 1:
            tokens -= 1
        else:
            wait = (1 - tokens) / rate
        self.buckets[user_id] = (tokens, now)
        if len(self.buckets) > self.max_users:
            self.buckets.popitem(last=False)
        return wait


class IdempotencyIndex:
    """(user, key) -> the first claim of the key in the log (its body hash, and the record
    itself, kept as bytes to publish again). Built from `api.idempotency` in log order;
    every record of one key is in one partition, so every instance sees the same first
    claim. `conflicted` holds the keys whose newest record is a losing claim: the winner's
    record is published again after it, so that compaction (which keeps the newest record
    per key) keeps the winner. The pack id is derived from (user, key) as well, so charging
    stays exactly-once even for a key this index no longer holds (expired from the topic)."""

    def __init__(self) -> None:
        self.first: dict[tuple[str, str], tuple[str, bytes]] = {}
        self.conflicted: dict[tuple[str, str], bytes] = {}

    def apply(self, ev: IdempotencyClaimed, raw: bytes) -> None:
        key = (ev.user_id, ev.idempotency_key)
        winner = self.first.get(key)
        if winner is None:
            self.first[key] = (ev.request_hash, raw)
        elif winner[0] != ev.request_hash:
            self.conflicted[key] = winner[1]
        else:
            self.conflicted.pop(key, None)

    def known(self, user_id: str, key: str) -> bool:
        return (user_id, key) in self.first

    def check(self, user_id: str, key: str, body_hash: str) -> bool:
        """True when the key is new or was first used with this same body."""
        winner = self.first.get((user_id, key))
        return winner is None or winner[0] == body_hash

    def take_conflicts(self) -> dict[tuple[str, str], bytes]:
        conflicts, self.conflicted = self.conflicted, {}
        return conflicts
