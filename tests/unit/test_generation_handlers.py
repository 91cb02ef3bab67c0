"""The retry policy and what a job's outcome emits, in memory."""

from __future__ import annotations

import random
import uuid

from services.generation import handlers
from shared.errors import PermanentImageError, TransientImageError
from shared.events import APLUS_KINDS, ImageFailed, ImageJob, ImageStatus, PackAccepted, Product, decode
from shared.kafka import header
from shared.pricing import plan_pack
from shared.topics import RETRY_TIERS_S, Topics

T = Topics("x.")
POLICY = handlers.RetryPolicy(max_attempts=3, base_delay_s=2, max_delay_s=300)


def job(attempt: int = 1) -> ImageJob:
    return ImageJob(pack_id=uuid.uuid4(), user_id="alice", image_id="main", kind="main", prompt="p", attempt=attempt)


def test_backoff_is_capped_full_jitter_with_retry_after_as_floor() -> None:
    rng = random.Random(1)
    delays = [POLICY.delay(5, rng) for _ in range(500)]
    assert 0 <= min(delays) < 2 and 28 < max(delays) <= 32  # cap = 2 * 2**4 = 32
    assert POLICY.delay(1, rng, retry_after_s=40) >= 40
    assert handlers.RetryPolicy(9, 2, 10).delay(9, rng) <= 10


def test_tiers_cover_the_delay() -> None:
    assert handlers.tier_for(0.2) == RETRY_TIERS_S[0]
    assert handlers.tier_for(6) == 30
    assert handlers.tier_for(10_000) == RETRY_TIERS_S[-1]


def test_fan_out_makes_one_job_per_image_with_deterministic_ids() -> None:
    product = Product(name="Lamp", features=["warm light"], style="nordic")
    specs = plan_pack(["main", "scale"], APLUS_KINDS, 1, 2)
    accepted = PackAccepted(pack_id=uuid.uuid4(), user_id="a", product=product, images=specs, cost=10)
    out = handlers.fan_out(handlers.jobs_of(accepted), T)
    jobs = [decode(o.value) for o in out]
    assert [j.image_id for j in jobs] == ["main", "scale", "aplus_banner", "aplus_features", "aplus_comparison", "aplus_story"]  # type: ignore[attr-defined]
    assert all(o.topic == "x.images.jobs" and o.key == str(accepted.pack_id).encode() for o in out)
    assert "Lamp" in jobs[0].prompt and "warm light" in jobs[0].prompt and "nordic" in jobs[0].prompt  # type: ignore[attr-defined]
    assert [j.event_id for j in jobs] == [decode(o.value).event_id for o in handlers.fan_out(handlers.jobs_of(accepted), T)]


def test_transient_failure_goes_to_a_retry_tier_with_headers() -> None:
    j = job(attempt=1)
    out = handlers.failed(j, TransientImageError("503", retry_after_s=7), POLICY, T, "x.images.jobs", [], random.Random(0), now=1000.0)
    status, retry = out
    assert status.topic == "x.packs.status"
    ev = decode(status.value)
    assert isinstance(ev, ImageStatus) and ev.image.status == "RETRYING" and ev.image.next_attempt_at is not None
    assert retry.topic == "x.images.retry.30s"
    assert decode(retry.value).attempt == 2  # type: ignore[attr-defined]
    assert int(header(retry.headers, "x-due-at") or 0) >= 1_007_000
    for name in ("x-attempts", "x-error", "x-error-type", "x-original-topic", "x-first-failed-at"):
        assert header(retry.headers, name) is not None
    assert header(retry.headers, "x-error-type") == "TransientImageError"


def test_first_failure_time_survives_later_attempts() -> None:
    first = handlers.failed(job(1), TransientImageError("x"), POLICY, T, "x.images.jobs", [], random.Random(0), now=1000.0)[1]
    second = handlers.failed(job(2), TransientImageError("x"), POLICY, T, "x.images.jobs", first.headers, random.Random(0), now=2000.0)[1]
    assert header(second.headers, "x-first-failed-at") == "1000000"


def test_last_attempt_and_permanent_errors_dead_letter() -> None:
    for exc, j in ((TransientImageError("again"), job(3)), (PermanentImageError("content policy"), job(1))):
        dlq, status, result = handlers.failed(j, exc, POLICY, T, "x.images.jobs", [], random.Random(0))
        assert dlq.topic == "x.images.dlq" and decode(dlq.value) == j
        assert decode(status.value).image.status == "FAILED"  # type: ignore[attr-defined]
        failed = decode(result.value)
        assert isinstance(failed, ImageFailed) and result.topic == "x.images.results" and failed.cost == j.cost
    assert "content policy" in failed.error
