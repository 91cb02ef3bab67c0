"""Generation logic over typed events: fan-out, prompts, and what a job's outcome emits.

No I/O here: functions return the messages to publish, so the retry policy and the
event sequences are tested in memory.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shared.errors import PermanentImageError, TransientImageError
from shared.events import (
    ImageCompleted,
    ImageEntry,
    ImageFailed,
    ImageJob,
    ImageState,
    ImageStatus,
    PackAccepted,
    Product,
    stable_id,
)
from shared.kafka import Headers, Outgoing, failure_headers, header
from shared.logs import Step, lifecycle
from shared.topics import RETRY_TIERS_S, Topics

KIND_BRIEFS = {
    "main": "the product alone, centred on a pure white background, studio lighting, no text",
    "lifestyle": "the product in use in a realistic everyday setting with people",
    "infographic": "the product with callouts that highlight its key features",
    "detail": "a close-up of the product's materials, texture and craftsmanship",
    "scale": "the product next to familiar objects to show its real size",
    "packaging": "the product with its retail packaging and what is in the box",
    "aplus_banner": "a wide brand banner introducing the product",
    "aplus_features": "a wide module with the product and three feature panels",
    "aplus_comparison": "a wide comparison chart of the product against alternatives",
    "aplus_story": "a wide brand-story module showing where the product comes from",
}


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int
    base_delay_s: float
    max_delay_s: float

    def delay(self, attempt: int, rng: random.Random, retry_after_s: float | None = None) -> float:
        """Exponential backoff with full jitter; the provider's Retry-After is a floor."""
        cap = min(self.max_delay_s, self.base_delay_s * 2 ** (attempt - 1))
        return max(rng.uniform(0, cap), retry_after_s or 0.0)


def tier_for(delay_s: float) -> int:
    """The smallest tier that covers the delay (the last tier takes anything longer)."""
    for tier in RETRY_TIERS_S:
        if delay_s <= tier:
            return tier
    return RETRY_TIERS_S[-1]


def build_prompt(product: Product, kind: str) -> str:
    parts = [f"Marketplace product photo: {KIND_BRIEFS.get(kind, kind)}.", f"Product: {product.name}."]
    if product.description:
        parts.append(f"Description: {product.description}")
    if product.features:
        parts.append("Key features: " + "; ".join(product.features) + ".")
    if product.style:
        parts.append(f"Style: {product.style}.")
    return " ".join(parts)


def jobs_of(ev: PackAccepted) -> list[ImageJob]:
    """One job per image of the run (all of a new pack's, or a regeneration's)."""
    return [
        ImageJob(
            event_id=stable_id(ev.pack_id, spec.image_id, ev.run, "job", 1), pack_id=ev.pack_id, user_id=ev.user_id,
            image_id=spec.image_id, kind=spec.kind, prompt=build_prompt(ev.product, spec.kind),
            width=spec.width, height=spec.height, cost=spec.cost, run=ev.run,
        )
        for spec in ev.images
    ]


def fan_out(jobs: list[ImageJob], t: Topics) -> list[Outgoing]:
    """A pack's jobs on images.jobs, keyed by pack: one partition, in image order."""
    return [Outgoing.of(t.images_jobs, job, job.pack_id) for job in jobs]


def _image_status(
    t: Topics, job: ImageJob, status: ImageState, *, url: str | None = None, error: str | None = None,
    next_attempt_at: datetime | None = None,
) -> Outgoing:
    entry = ImageEntry(
        image_id=job.image_id, kind=job.kind, status=status, attempts=job.attempt, url=url, error=error,
        next_attempt_at=next_attempt_at,
    )
    event = ImageStatus(
        event_id=stable_id(job.pack_id, job.image_id, job.run, job.attempt, status),
        pack_id=job.pack_id, user_id=job.user_id, image=entry, run=job.run,
    )
    return Outgoing.of(t.packs_status, event, job.pack_id)


def generating(job: ImageJob, t: Topics) -> Outgoing:
    return _image_status(t, job, ImageState.GENERATING)


def succeeded(job: ImageJob, url: str, t: Topics) -> list[Outgoing]:
    # The image's status is handed to the producer before its result, so the pack's
    # terminal status (from credits) normally follows it in the same partition; a retried
    # produce batch can reorder them, and that terminal snapshot carries every image anyway.
    done = ImageCompleted(
        event_id=stable_id(job.pack_id, job.image_id, job.run, "completed"), pack_id=job.pack_id,
        user_id=job.user_id, image_id=job.image_id, kind=job.kind, run=job.run, attempts=job.attempt,
        url=url, cost=job.cost,
    )
    return [_image_status(t, job, ImageState.COMPLETED, url=url), Outgoing.of(t.images_results, done, job.pack_id)]


def failed(
    job: ImageJob, exc: Exception, policy: RetryPolicy, t: Topics, source_topic: str, headers: Headers,
    rng: random.Random, now: float | None = None,
) -> list[Outgoing]:
    """Transient and attempts left: to a retry tier. Otherwise: dead letter, FAILED, image.failed."""
    now = time.time() if now is None else now
    first_failed = int(header(headers, "x-first-failed-at") or now * 1000)
    original_topic = header(headers, "x-original-topic") or source_topic
    error_type = type(exc).__name__
    error = str(exc) or error_type

    def failure(extra: dict[str, Any] | None = None) -> Headers:
        return failure_headers(
            attempts=job.attempt, error=error, error_type=error_type, original_topic=original_topic,
            first_failed_at_ms=first_failed, extra=extra,
        )

    if isinstance(exc, TransientImageError) and job.attempt < policy.max_attempts:
        delay = policy.delay(job.attempt, rng, exc.retry_after_s)
        due_ms = int((now + delay) * 1000)
        retry = job.model_copy(update={
            "attempt": job.attempt + 1,
            "event_id": stable_id(job.pack_id, job.image_id, job.run, "job", job.attempt + 1),
        })
        extra = {"x-due-at": due_ms, "x-original-partition": header(headers, "x-original-partition")}
        hdrs = failure(extra)
        next_at = datetime.fromtimestamp(math.ceil(due_ms / 1000), UTC)
        return [
            _image_status(t, job, ImageState.RETRYING, error=error, next_attempt_at=next_at),
            Outgoing(t.retry(tier_for(delay)), retry.encode(), str(job.pack_id).encode(), hdrs),
        ]
    if not isinstance(exc, (TransientImageError, PermanentImageError)):
        error = f"unexpected error: {error}"
    reason = error if isinstance(exc, PermanentImageError) else f"gave up after {job.attempt} attempts: {error}"
    lost = ImageFailed(
        event_id=stable_id(job.pack_id, job.image_id, job.run, "failed"), pack_id=job.pack_id, user_id=job.user_id,
        image_id=job.image_id, kind=job.kind, run=job.run, attempts=job.attempt, error=reason,
        error_type=error_type, cost=job.cost,
    )
    return [
        Outgoing(t.images_dlq, job.encode(), str(job.pack_id).encode(), failure()),
        _image_status(t, job, ImageState.FAILED, error=reason),
        Outgoing.of(t.images_results, lost, job.pack_id),
    ]


def log_step(step: Step, job: ImageJob, **more: Any) -> None:
    lifecycle(step, pack_id=job.pack_id, image_id=job.image_id, user_id=job.user_id, event_id=job.event_id,
              attempt=job.attempt, run=job.run, **more)


def log_failure(job: ImageJob, outcome: list[Outgoing], t: Topics) -> None:
    """`failed`, then where the job went: a retry tier or the dead letters (what `failed` decided)."""
    error = header(next((m.headers for m in outcome if m.headers), None), "x-error")
    log_step("failed", job, error=error or "")
    for m in outcome:
        if m.topic == t.images_dlq:
            log_step("dead_lettered", job, topic=m.topic)
        elif m.topic in t.retry_topics:
            log_step("retried", job, topic=m.topic, due_at=header(m.headers, "x-due-at"))
