"""webhooks.deliveries -> the receivers, in its own consumer group.

Deliveries are read ahead and each one runs as its own task, holding one of its
endpoint's few slots for at most the HTTP timeout: a hung receiver occupies only its own
slots, and every other endpoint's deliveries go past it. Deliveries finish out of order,
so a partition's offset is committed only up to its oldest unfinished delivery. An
endpoint with too many deliveries waiting has the next ones set aside in the first retry
tier (no attempt counted), so it cannot fill the read-ahead either."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import httpx
from aiokafka import TopicPartition
from prometheus_client import Counter

from services.notifier.webhooks.handlers import Outcome, RetryPolicy, after_attempt
from shared.consumer import ConsumerLoop, Rebalance, Record, group_member
from shared.events import WebhookDelivery
from shared.fairness import OffsetTracker
from shared.kafka import Outgoing, Publisher
from shared.settings import CommonSettings
from shared.topics import RETRY_TIERS_S, WEBHOOKS_DELIVERIES
from shared.webhook_endpoints import WebhookEndpoints
from shared.webhooks import AllowList, TargetRefused, check_target, endpoint_secret, server_secret_for, signed_headers
from shared.worker import decode_or_dead_letter, handle

log = logging.getLogger("packline.webhooks.sender")
ATTEMPTS = Counter("packline_webhook_attempts_total", "webhook delivery attempts", ["outcome"])
RETIRED = "the server secret this endpoint's secret derives from is not in PACKLINE_SECRETS here"


def group_id(topic_prefix: str) -> str:
    return f"{topic_prefix}packline-webhooks-send"


class Sender(ConsumerLoop):
    name = "webhook-sender"
    commit_every_s = 0.5

    def __init__(
        self, settings: CommonSettings, endpoints: WebhookEndpoints, publisher: Publisher, policy: RetryPolicy, *,
        timeout_s: float, slots_per_endpoint: int, backlog_per_endpoint: int, prefetch: int,
    ) -> None:
        self.settings, self.endpoints, self.publisher, self.policy = settings, endpoints, publisher, policy
        self.timeout_s, self.slots_per_endpoint = timeout_s, slots_per_endpoint
        self.backlog_per_endpoint, self.prefetch = backlog_per_endpoint, prefetch
        self.allowed = AllowList.parse(settings.webhook_allowed_hosts)
        self.offsets: OffsetTracker[TopicPartition] = OffsetTracker()
        self.slots: dict[str, asyncio.Semaphore] = {}
        self.waiting: dict[str, int] = {}  # endpoint -> deliveries queued or in flight here
        self.tasks: set[asyncio.Task[None]] = set()
        self.client: httpx.AsyncClient | None = None
        self._last_commit = 0.0

    async def start(self) -> None:
        # No redirects: a 3xx is an answer (a failed attempt), never a way around the address check.
        self.client = httpx.AsyncClient(timeout=self.timeout_s, follow_redirects=False)
        self.consumer = group_member(self.settings.kafka, group_id(self.settings.topic_prefix))
        await self.consumer.start()
        self.consumer.subscribe([self.settings.topics.webhooks_deliveries], listener=Rebalance(revoked=self._revoked))
        self.spawn()

    async def stop(self) -> None:
        await self.halt()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=2)
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self._commit(force=True)
        if self.client is not None:
            await self.client.aclose()
        await super().stop()

    async def step(self) -> None:
        assert self.consumer is not None
        await self.endpoints.ready.wait()
        await self.read_ahead(self.offsets.pending, self.prefetch)
        batches = await self.consumer.getmany(timeout_ms=200, max_records=max(1, self.prefetch - self.offsets.pending()))
        for tp, records in batches.items():
            for record in records:
                self.offsets.fetched(tp, record.offset)
                d = await decode_or_dead_letter(record, WEBHOOKS_DELIVERIES, self.publisher, self.settings)
                if d is None:
                    self.offsets.done(tp, record.offset)
                elif self.waiting.get(d.endpoint_id, 0) >= self.backlog_per_endpoint:
                    await self._set_aside(d, record)
                    self.offsets.done(tp, record.offset)
                else:
                    self.waiting[d.endpoint_id] = self.waiting.get(d.endpoint_id, 0) + 1
                    task = asyncio.create_task(self._one(tp, record, d), name=f"webhook-{d.webhook_id}")
                    self.tasks.add(task)
                    task.add_done_callback(self.tasks.discard)
        await self._commit()

    async def _set_aside(self, d: WebhookDelivery, record: Record) -> None:
        tier = RETRY_TIERS_S[0]
        headers = [(k, v) for k, v in record.headers if k != "x-due-at"]
        headers.append(("x-due-at", str(int((time.time() + tier) * 1000)).encode()))
        await self.publisher.send([Outgoing(self.settings.topics.webhook_retry(tier), d.encode(), d.endpoint_id.encode(), headers)])

    async def _one(self, tp: TopicPartition, record: Record, d: WebhookDelivery) -> None:
        try:
            slot = self.slots.setdefault(d.endpoint_id, asyncio.Semaphore(self.slots_per_endpoint))
            async with slot:
                await handle(d, record, self._deliver, self.publisher, self.settings)
            self.offsets.done(tp, record.offset)
        finally:
            self.waiting[d.endpoint_id] -= 1
            if not self.waiting[d.endpoint_id]:
                del self.waiting[d.endpoint_id]
                self.slots.pop(d.endpoint_id, None)

    async def _deliver(self, d: WebhookDelivery, record: Record) -> None:
        """One attempt, then its record and the delivery's next step, acknowledged by Kafka."""
        outcome = await self.attempt(d)
        if outcome is not None:
            await self.publisher.send(after_attempt(d, outcome, self.policy, self.settings.topics, list(record.headers)))
            ATTEMPTS.labels("delivered" if outcome.ok else "failed").inc()

    async def attempt(self, d: WebhookDelivery) -> Outcome | None:
        """None: the endpoint is deleted (nothing more goes to it, retries included)."""
        assert self.client is not None
        endpoint = self.endpoints.index.endpoints.get(d.endpoint_id)
        if endpoint is None or endpoint.user_id != d.user_id:
            log.info("dropping delivery %s: endpoint %s is deleted", d.webhook_id, d.endpoint_id)
            return None
        server = server_secret_for(endpoint.secret_ref, self.settings.keyring.secrets)
        if server is None:  # retried: during a rotation, this instance may not know the new secret yet
            return Outcome(error=RETIRED)
        try:  # checked again before each attempt: what a name resolves to may have changed
            await asyncio.to_thread(check_target, endpoint.url, self.allowed)
        except TargetRefused as exc:
            return Outcome(error=str(exc))
        body = d.body.encode()
        headers = signed_headers(endpoint_secret(server, endpoint.endpoint_id), d.webhook_id, body)
        started = time.monotonic()
        try:
            answer = await self.client.post(endpoint.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return Outcome(error=f"{type(exc).__name__}: {exc}"[:500] or type(exc).__name__, duration_ms=_ms(started))
        return Outcome(status_code=answer.status_code, duration_ms=_ms(started))

    async def _commit(self, force: bool = False) -> None:
        assert self.consumer is not None
        now = time.monotonic()
        if not force and now - self._last_commit < self.commit_every_s:
            return
        self._last_commit = now
        offsets = self.offsets.committable(self.consumer.assignment())
        if not offsets:
            return
        try:
            await self.consumer.commit(offsets)
            self.offsets.committed(offsets)
        except Exception as exc:  # a rebalance in progress: the next round commits again
            log.info("commit of %s deferred: %r", offsets, exc)

    async def _revoked(self, revoked: list[TopicPartition]) -> None:
        # What is finished is committed; deliveries still running are delivered again by the
        # partition's next owner (at least once, under the same webhook-id).
        with contextlib.suppress(Exception):
            await self._commit(force=True)
        self.offsets.forget(revoked)


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
