"""The webhook deliverer inside a notifier process. Wiring only: the endpoints follower,
the dispatcher (packs.status -> webhooks.deliveries), the sender (-> the receivers) and
the retry tiers' mover, with a publisher of their own."""

from __future__ import annotations

from services.notifier.settings import Settings
from services.notifier.state import Store
from services.notifier.webhooks import dispatch
from services.notifier.webhooks.handlers import RetryPolicy
from services.notifier.webhooks.sender import Sender
from shared.kafka import Publisher
from shared.retry import RetryForwarder
from shared.topics import WEBHOOKS_DELIVERIES
from shared.webhook_endpoints import WebhookEndpoints


class Webhooks:
    def __init__(self, settings: Settings, store: Store) -> None:
        self.publisher = Publisher(settings.kafka, "packline-notifier-webhooks")
        self.endpoints = WebhookEndpoints(settings.kafka, settings.topics.webhooks_endpoints, "packline-notifier-webhook-endpoints")
        self.dispatcher = dispatch.Dispatcher(settings, store, self.endpoints, self.publisher)
        policy = RetryPolicy(settings.webhook_max_attempts, settings.webhook_retry_base_s, settings.webhook_retry_max_s)
        self.sender = Sender(
            settings, self.endpoints, self.publisher, policy, timeout_s=settings.webhook_timeout_s,
            slots_per_endpoint=settings.webhook_slots_per_endpoint, backlog_per_endpoint=settings.webhook_backlog_per_endpoint,
            prefetch=settings.webhook_prefetch,
        )
        self.retry = RetryForwarder(
            settings.kafka, f"{settings.topic_prefix}packline-webhooks-retry", settings.topics, self.publisher,
            tiers=settings.topics.webhook_retry_topics, target=WEBHOOKS_DELIVERIES,
        )

    async def start(self) -> None:
        await self.publisher.start()
        await self.endpoints.start()
        await self.dispatcher.start()
        await self.sender.start()
        await self.retry.start()

    async def stop(self) -> None:
        await self.retry.stop()
        await self.sender.stop()
        await self.dispatcher.stop()
        await self.endpoints.stop()
        await self.publisher.stop()
