"""The webhook endpoints as the api and the deliverer see them: a follower of the compacted
topic `webhooks.endpoints`, read from the beginning and followed for ever (like the key
registry). The api lists and deletes endpoints from it; the deliverer finds the endpoints
of a user, their URL, events and the server secret their signing secret comes from."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shared.consumer import EventFeed
from shared.events import WebhookEndpointDeleted
from shared.kafka import KafkaConfig
from shared.topics import WEBHOOKS_ENDPOINTS, WebhookEndpointRecord

log = logging.getLogger("packline.webhooks.endpoints")


@dataclass(frozen=True)
class Endpoint:
    endpoint_id: str
    user_id: str
    url: str
    events: tuple[str, ...]
    secret_ref: str
    created_at: datetime

    def view(self) -> dict[str, Any]:
        """What `GET /v1/webhooks` shows (never the secret)."""
        return {"id": self.endpoint_id, "url": self.url, "events": list(self.events), "created_at": self.created_at}


@dataclass
class EndpointIndex:
    """Endpoints by id and by user; a deleted id stays deleted whatever is read after."""

    endpoints: dict[str, Endpoint] = field(default_factory=dict)
    by_user: dict[str, dict[str, None]] = field(default_factory=dict)
    deleted: set[str] = field(default_factory=set)

    def apply(self, ev: WebhookEndpointRecord) -> None:
        if isinstance(ev, WebhookEndpointDeleted):
            self.deleted.add(ev.endpoint_id)
            gone = self.endpoints.pop(ev.endpoint_id, None)
            if gone is not None:
                mine = self.by_user.get(gone.user_id, {})
                mine.pop(ev.endpoint_id, None)
                if not mine:
                    self.by_user.pop(gone.user_id, None)
            return
        if ev.endpoint_id in self.deleted or ev.endpoint_id in self.endpoints:
            return
        self.endpoints[ev.endpoint_id] = Endpoint(
            ev.endpoint_id, ev.user_id, ev.url, tuple(ev.events), ev.secret_ref, ev.occurred_at,
        )
        self.by_user.setdefault(ev.user_id, {})[ev.endpoint_id] = None

    def of_user(self, user_id: str) -> list[Endpoint]:
        return [self.endpoints[e] for e in self.by_user.get(user_id, ())]

    def owned(self, user_id: str, endpoint_id: str) -> Endpoint | None:
        """The endpoint if `user_id` owns it: another user's endpoint is as unknown as a missing one."""
        endpoint = self.endpoints.get(endpoint_id)
        return endpoint if endpoint is not None and endpoint.user_id == user_id else None

    def subscribed(self, user_id: str, event_type: str) -> list[Endpoint]:
        return [e for e in self.of_user(user_id) if event_type in e.events]


class WebhookEndpoints(EventFeed[WebhookEndpointRecord]):
    name = "webhook-endpoints"

    def __init__(self, kafka: KafkaConfig, topic: str, client_id: str) -> None:
        super().__init__(kafka, topic, client_id, WEBHOOKS_ENDPOINTS.events)
        self.index = EndpointIndex()

    def apply(self, event: WebhookEndpointRecord) -> None:
        self.index.apply(event)
