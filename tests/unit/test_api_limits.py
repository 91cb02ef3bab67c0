from __future__ import annotations

import uuid
from datetime import timedelta

from services.api.coordination import ApiInstances
from services.api.limits import IdempotencyIndex, RateLimiter
from shared.events import ApiInstanceSeen, IdempotencyClaimed, utcnow
from shared.kafka import KafkaConfig, Publisher


def test_token_bucket_allows_a_burst_then_says_how_long_to_wait() -> None:
    limiter = RateLimiter(rate_per_s=2, burst=3)
    assert [limiter.take("alice", now=100.0) for _ in range(3)] == [0, 0, 0]
    assert limiter.take("alice", now=100.0) == 0.5  # one token every 0.5 s
    assert limiter.take("bob", now=100.0) == 0  # buckets are per user
    assert limiter.take("alice", now=100.6) == 0


def test_each_instance_takes_its_share_of_the_deployments_limit() -> None:
    limiter = RateLimiter(rate_per_s=2, burst=4)
    assert [limiter.take("alice", now=100.0, share=0.5) for _ in range(2)] == [0, 0]
    assert limiter.take("alice", now=100.0, share=0.5) == 1.0  # half the rate: a token every second
    assert limiter.take("alice", now=101.0, share=0.5) == 0
    # A share below one request still lets one through per refill, never a bucket that is always empty.
    assert RateLimiter(rate_per_s=1, burst=1).take("bob", now=0.0, share=0.25) == 0


def claim(user: str, key: str, body: str) -> tuple[IdempotencyClaimed, bytes]:
    ev = IdempotencyClaimed(user_id=user, idempotency_key=key, request_hash=body, pack_id=uuid.uuid4())
    return ev, ev.encode()


def test_idempotency_index_keeps_the_first_body_in_the_log() -> None:
    index = IdempotencyIndex()
    assert index.check("alice", "k", "h1") and not index.known("alice", "k")
    first = claim("alice", "k", "h1")
    index.apply(*first)
    assert index.known("alice", "k")
    assert index.check("alice", "k", "h1") and not index.check("alice", "k", "h2")
    assert index.check("bob", "k", "h2")
    index.apply(*claim("alice", "k", "h1"))  # the same body again: no conflict
    assert not index.take_conflicts()
    index.apply(*claim("alice", "k", "h2"))  # a later, losing claim: the first still wins
    assert not index.check("alice", "k", "h2") and index.check("alice", "k", "h1")
    # ... and the winner's record is to be published again after it, for compaction.
    assert index.take_conflicts() == {("alice", "k"): first[1]}
    assert not index.take_conflicts()
    index.apply(*claim("alice", "k", "h2"))
    index.apply(first[0], first[1])  # the winner re-published: nothing left to repair
    assert not index.take_conflicts()


def test_live_api_instances_share_the_limit() -> None:
    instances = ApiInstances(KafkaConfig("127.0.0.1:1"), "api.instances", Publisher(KafkaConfig("127.0.0.1:1"), "t"),
                             heartbeat_s=2, ttl_s=10)
    now = utcnow()
    assert instances.live(now) == 1 and instances.share() == 1.0  # itself, always
    instances.apply(ApiInstanceSeen(instance_id=instances.instance_id, started_at=now, occurred_at=now))
    instances.apply(ApiInstanceSeen(instance_id="b", started_at=now, occurred_at=now - timedelta(seconds=3)))
    instances.apply(ApiInstanceSeen(instance_id="c", started_at=now, occurred_at=now - timedelta(seconds=30)))
    assert instances.live(now) == 2  # c's last heartbeat is older than the ttl
    instances.apply(ApiInstanceSeen(instance_id="c", started_at=now, occurred_at=now))
    assert instances.live(now) == 3
    instances.apply(ApiInstanceSeen(instance_id="b", started_at=now, occurred_at=now, leaving=True))
    assert instances.live(now) == 2  # a clean stop gives its share back at once
    assert instances.live(now + timedelta(seconds=11)) == 1
