"""HTTP edge of webhooks (scope `webhooks`): a user's endpoints (`/v1/webhooks`) and what
each delivery attempt got. Registrations and deletions go to `webhooks.endpoints`; the
endpoints and the attempts are read back from Kafka (docs/webhooks.md)."""

from __future__ import annotations

import asyncio
import logging
import secrets as _random
from collections import deque
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Request
from pydantic import BaseModel, Field, field_validator

from services.api.deps import PublisherDep, SettingsDep, caught_up
from shared.consumer import EventFeed
from shared.errors import BrokerUnavailable
from shared.events import WebhookAttempted, WebhookEndpointDeleted, WebhookEndpointRegistered, WebhookEventType
from shared.http import ApiKey, Scoped, unprocessable
from shared.kafka import KafkaConfig, Outgoing
from shared.topics import WEBHOOKS_ATTEMPTS
from shared.webhook_endpoints import WebhookEndpoints
from shared.webhooks import AllowList, TargetRefused, check_target, endpoint_secret, secret_ref

log = logging.getLogger("packline.api.webhooks")
router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])
ATTEMPTS_KEPT = 100  # per endpoint, newest kept


class AttemptLog(EventFeed[WebhookAttempted]):
    """`webhooks.attempts`, followed for ever: the last ATTEMPTS_KEPT attempts per endpoint."""

    name = "webhook-attempts"

    def __init__(self, kafka: KafkaConfig, topic: str) -> None:
        super().__init__(kafka, topic, "packline-api-webhook-attempts", WEBHOOKS_ATTEMPTS.events)
        self.by_endpoint: dict[str, deque[dict[str, Any]]] = {}

    def apply(self, ev: WebhookAttempted) -> None:
        kept = self.by_endpoint.setdefault(ev.endpoint_id, deque(maxlen=ATTEMPTS_KEPT))
        kept.append({
            "webhook_id": ev.webhook_id, "type": ev.event_type, "attempt": ev.attempt, "at": ev.occurred_at,
            "status_code": ev.status_code, "error": ev.error, "ok": ev.ok, "duration_ms": ev.duration_ms, "next": ev.next,
        })

    def forget(self, endpoint_id: str) -> None:
        self.by_endpoint.pop(endpoint_id, None)


class WebhookRequest(BaseModel):
    url: Annotated[str, Field(min_length=1, max_length=2000)]
    events: Annotated[list[WebhookEventType], Field(min_length=1, max_length=2)] = ["pack.terminal"]

    @field_validator("events")
    @classmethod
    def _unique(cls, events: list[WebhookEventType]) -> list[WebhookEventType]:
        if len(set(events)) != len(events):
            raise ValueError("events must not repeat")
        return events


class WebhookView(BaseModel):
    id: str
    url: str
    events: list[WebhookEventType]
    created_at: datetime


class WebhookCreated201(WebhookView):
    secret: str = Field(description="the endpoint's signing secret (whsec_...): shown once, in this answer only")


class WebhookList(BaseModel):
    webhooks: list[WebhookView]


class Attempt(BaseModel):
    webhook_id: str
    type: WebhookEventType
    attempt: int
    at: datetime
    status_code: int | None
    error: str | None
    ok: bool
    duration_ms: int
    next: str


class AttemptList(BaseModel):
    deliveries: list[Attempt]


def get_endpoints(request: Request) -> WebhookEndpoints:
    return caught_up(request, "webhook_endpoints", WebhookEndpoints, "the webhook endpoints")


def get_attempts(request: Request) -> AttemptLog:
    return caught_up(request, "webhook_attempts", AttemptLog, "the webhook delivery attempts")


WebhooksKey = Annotated[ApiKey, Depends(Scoped("webhooks"))]
EndpointsDep = Annotated[WebhookEndpoints, Depends(get_endpoints)]
AttemptsDep = Annotated[AttemptLog, Depends(get_attempts)]
EndpointIdPath = Annotated[str, Path(max_length=64)]


@router.post("", status_code=201, response_model=WebhookCreated201)
async def register(
    body: WebhookRequest, key: WebhooksKey, settings: SettingsDep, publisher: PublisherDep, endpoints: EndpointsDep,
) -> WebhookCreated201:
    """A new endpoint of the caller's user; its signing secret is in this answer only."""
    try:
        await asyncio.to_thread(check_target, body.url, AllowList.parse(settings.webhook_allowed_hosts))
    except TargetRefused as exc:
        raise unprocessable(["body", "url"], str(exc)) from exc
    signing = settings.keyring.signing
    event = WebhookEndpointRegistered(
        endpoint_id=f"we_{_random.token_hex(8)}", user_id=key.user_id, url=body.url, events=body.events,
        secret_ref=secret_ref(signing),
    )
    try:
        await publisher.send([Outgoing.of(settings.topics.webhooks_endpoints, event, event.endpoint_id)])
    except BrokerUnavailable as exc:
        raise HTTPException(503, "the webhook registry is unavailable; nothing was registered, try again",
                            headers={"Retry-After": "5"}) from exc
    endpoints.index.apply(event)  # this instance lists it at once; the others within a poll
    view = endpoints.index.endpoints[event.endpoint_id].view()
    return WebhookCreated201(**view, secret=endpoint_secret(signing, event.endpoint_id))


@router.get("", response_model=WebhookList)
async def list_endpoints(key: WebhooksKey, endpoints: EndpointsDep) -> WebhookList:
    """The caller's user's endpoints, oldest first."""
    return WebhookList(webhooks=[WebhookView(**e.view()) for e in endpoints.index.of_user(key.user_id)])


@router.delete("/{endpoint_id}", response_model=WebhookView)
async def delete(
    endpoint_id: EndpointIdPath, key: WebhooksKey, settings: SettingsDep, publisher: PublisherDep,
    endpoints: EndpointsDep, attempts: AttemptsDep,
) -> WebhookView:
    """Delete an endpoint: nothing more is delivered to it, retries included."""
    endpoint = endpoints.index.owned(key.user_id, endpoint_id)
    if endpoint is None:
        raise HTTPException(404, "no such webhook")
    event = WebhookEndpointDeleted(endpoint_id=endpoint_id, user_id=key.user_id)
    try:
        await publisher.send([Outgoing.of(settings.topics.webhooks_endpoints, event, endpoint_id)])
    except BrokerUnavailable as exc:
        raise HTTPException(503, "the webhook registry is unavailable; nothing was deleted, try again",
                            headers={"Retry-After": "5"}) from exc
    endpoints.index.apply(event)
    attempts.forget(endpoint_id)
    return WebhookView(**endpoint.view())


@router.get("/{endpoint_id}/deliveries", response_model=AttemptList)
async def deliveries(endpoint_id: EndpointIdPath, key: WebhooksKey, endpoints: EndpointsDep, attempts: AttemptsDep) -> AttemptList:
    """The endpoint's last delivery attempts (at most 100), oldest first."""
    if endpoints.index.owned(key.user_id, endpoint_id) is None:
        raise HTTPException(404, "no such webhook")
    return AttemptList(deliveries=[Attempt(**a) for a in attempts.by_endpoint.get(endpoint_id, ())])
