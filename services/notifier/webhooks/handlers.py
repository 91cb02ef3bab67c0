"""Webhook logic with no I/O: which deliveries a status event makes, what their bodies
are, and what an attempt's outcome publishes (the attempt record, then a retry tier, the
dead letters, or nothing)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from shared.events import ImageStatus, PackStatus, WebhookAttempted, WebhookDelivery, WebhookEventType, stable_id
from shared.kafka import Headers, Outgoing, failure_headers, header
from shared.topics import RETRY_TIERS_S, PackFeed, Topics
from shared.webhook_endpoints import EndpointIndex
from shared.webhooks import backoff_s, body_of, tier_for

# Registration and status events are timed by different hosts' clocks.
CLOCK_SKEW = timedelta(seconds=60)


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int
    base_delay_s: float
    max_delay_s: float

    def delay_s(self, attempt: int) -> float:
        return backoff_s(attempt, self.base_delay_s, self.max_delay_s)


def event_type(ev: PackFeed) -> WebhookEventType | None:
    """The webhook event a status event is, if any: a pack reaching a terminal status, or
    any change of an image."""
    if isinstance(ev, PackStatus):
        return "pack.terminal" if ev.status.terminal else None
    return "image.status"


def pack_data(ev: PackStatus, current: dict[str, Any] | None) -> dict[str, Any]:
    """The pack's snapshot as `GET /v1/packs/{id}` serves it, at this event: the notifier's
    snapshot with what this event set (the same fields the notifier sets from it), so a
    pack that moved on since (reopened by a replay) is still described as it was here."""
    snap = dict(current) if current is not None else {
        "pack_id": str(ev.pack_id), "user_id": ev.user_id, "created_at": ev.occurred_at.isoformat(), "images": [], "seq": 0,
    }
    snap.update({
        "status": ev.status.value, "cost": ev.cost, "charged": ev.charged, "refunded": ev.refunded, "reason": ev.reason,
        "updated_at": ev.occurred_at.isoformat(),
    })
    if ev.images is not None:
        snap["images"] = [entry.model_dump(mode="json") for entry in ev.images]
    return snap


def image_data(ev: ImageStatus) -> dict[str, Any]:
    """The image's entry, as the notifier's `image` SSE events carry it."""
    return {**ev.image.model_dump(mode="json"), "pack_id": str(ev.pack_id)}


def deliveries(ev: PackFeed, kind: WebhookEventType, data: dict[str, Any], endpoints: EndpointIndex) -> list[WebhookDelivery]:
    """One delivery per endpoint of the user subscribed to `kind` that existed when the
    event happened (give or take CLOCK_SKEW: a dispatcher catching up does not replay
    history to a new endpoint). Ids derive from the endpoint and the status event, so a
    status event read twice makes the same deliveries (the same `webhook-id`: a receiver
    drops the repeat)."""
    body = body_of(kind, data).decode()
    return [
        WebhookDelivery(
            event_id=stable_id("webhook", endpoint.endpoint_id, ev.event_id), webhook_id=f"msg_{_hex(endpoint.endpoint_id, ev.event_id)}",
            endpoint_id=endpoint.endpoint_id, user_id=ev.user_id, event_type=kind, pack_id=ev.pack_id, body=body,
        )
        for endpoint in endpoints.subscribed(ev.user_id, kind) if ev.occurred_at >= endpoint.created_at - CLOCK_SKEW
    ]


def _hex(*parts: str) -> str:
    return uuid.UUID(stable_id("webhook-id", *parts)).hex


@dataclass(frozen=True)
class Outcome:
    status_code: int | None = None
    error: str | None = None
    duration_ms: int = 0

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def after_attempt(
    d: WebhookDelivery, outcome: Outcome, policy: RetryPolicy, t: Topics, headers: Headers, now: float | None = None,
) -> list[Outgoing]:
    """The attempt's record, and where the delivery goes next: nowhere (delivered), the
    retry tier that covers its backoff, or the dead letters after `max_attempts`."""
    now = time.time() if now is None else now
    error = outcome.error or (None if outcome.ok else f"HTTP {outcome.status_code}")
    if outcome.ok:
        following: list[Outgoing] = []
        nxt = "done"
    elif d.attempt < policy.max_attempts:
        delay = policy.delay_s(d.attempt)
        extra = {"x-due-at": int((now + delay) * 1000), "x-backoff-ms": int(delay * 1000)}
        retry = d.model_copy(update={"attempt": d.attempt + 1, "event_id": stable_id(d.event_id, "attempt", d.attempt + 1)})
        following = [Outgoing(t.webhook_retry(tier_for(delay, RETRY_TIERS_S)), retry.encode(), d.endpoint_id.encode(),
                              _failure(d, error or "", headers, t, extra))]
        nxt = "retry"
    else:
        following = [Outgoing(t.webhooks_dlq, d.encode(), d.endpoint_id.encode(), _failure(d, error or "", headers, t))]
        nxt = "dead_letter"
    attempt = WebhookAttempted(
        webhook_id=d.webhook_id, endpoint_id=d.endpoint_id, user_id=d.user_id, event_type=d.event_type, attempt=d.attempt,
        status_code=outcome.status_code, error=error, ok=outcome.ok, duration_ms=outcome.duration_ms, next=nxt,
    )
    return [Outgoing.of(t.webhooks_attempts, attempt, d.endpoint_id), *following]


def _failure(d: WebhookDelivery, error: str, headers: Headers, t: Topics, extra: dict[str, Any] | None = None) -> Headers:
    first = header(headers, "x-first-failed-at")
    return failure_headers(
        attempts=d.attempt, error=error, error_type="WebhookDeliveryFailed", original_topic=t.webhooks_deliveries,
        first_failed_at_ms=int(first) if first and first.isdigit() else None,
        extra={"x-webhook-id": d.webhook_id, "x-pack-id": str(d.pack_id), **(extra or {})},
    )



def replayed(d: WebhookDelivery, entry_id: str, operator: str, t: Topics) -> Outgoing:
    """A dead-lettered delivery sent again by an operator (`packline dlq replay`): from its
    first attempt, under the same webhook-id."""
    fresh = d.model_copy(update={"attempt": 1, "event_id": stable_id(entry_id, "replay-webhook")})
    headers = [("x-replayed-from", entry_id.encode()), ("x-replayed-by", operator.encode())]
    return Outgoing(t.webhooks_deliveries, fresh.encode(), d.endpoint_id.encode(), headers)
