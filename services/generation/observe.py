"""What one call to the image provider looks like from outside: a client span in the
pack's trace, its duration (buckets up to three minutes: real images take 30-60 s) and
its outcome."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator

from opentelemetry.trace import SpanKind
from prometheus_client import Counter, Histogram

from shared import tracing
from shared.errors import PermanentImageError, TransientImageError
from shared.events import ImageJob

PROVIDER_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0)
PROVIDER_SECONDS = Histogram(
    "packline_provider_call_duration_seconds", "image provider call duration, by outcome", ["outcome"],
    buckets=PROVIDER_BUCKETS,
)
PROVIDER_CALLS = Counter("packline_provider_calls_total", "image provider calls, by outcome", ["outcome"])
OUTCOMES = ("ok", "transient", "permanent", "error", "cancelled")


def outcome_of(exc: BaseException | None) -> str:
    """One of OUTCOMES: a bounded label, whatever the backend raised."""
    if exc is None:
        return "ok"
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    if isinstance(exc, TransientImageError):
        return "transient"
    if isinstance(exc, PermanentImageError):
        return "permanent"
    return "error"


@contextlib.contextmanager
def provider_call(job: ImageJob) -> Iterator[None]:
    started = time.perf_counter()
    failure: BaseException | None = None
    try:
        with tracing.span("image provider call", {
            "packline.pack_id": str(job.pack_id), "packline.image_id": job.image_id, "packline.attempt": job.attempt,
        }, SpanKind.CLIENT):
            yield
    except BaseException as exc:
        failure = exc
        raise
    finally:
        outcome = outcome_of(failure)
        PROVIDER_SECONDS.labels(outcome).observe(time.perf_counter() - started)
        PROVIDER_CALLS.labels(outcome).inc()
