from __future__ import annotations

from services.api.limits import IdempotencyIndex, RateLimiter


def test_token_bucket_allows_a_burst_then_says_how_long_to_wait() -> None:
    limiter = RateLimiter(rate_per_s=2, burst=3)
    assert [limiter.take("alice", now=100.0) for _ in range(3)] == [0, 0, 0]
    assert limiter.take("alice", now=100.0) == 0.5  # one token every 0.5 s
    assert limiter.take("bob", now=100.0) == 0  # buckets are per user
    assert limiter.take("alice", now=100.6) == 0


def test_idempotency_index_tells_same_body_from_different() -> None:
    index = IdempotencyIndex(max_entries=2)
    assert index.check("alice", "k", "h1")
    index.remember("alice", "k", "h1")
    assert index.check("alice", "k", "h1") and not index.check("alice", "k", "h2")
    assert index.check("bob", "k", "h2")
