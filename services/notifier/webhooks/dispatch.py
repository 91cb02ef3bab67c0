"""packs.status -> webhooks.deliveries: in its own consumer group (each status event is
handled by one notifier instance, whatever their number), one delivery message per
subscribed endpoint. The deliveries are published before the group commits past the
status event, so none is lost; read twice, a status event makes the same deliveries.

A pack's snapshot is the notifier's own (the store that serves `GET /v1/packs/{id}`): the
dispatcher waits until the store has applied the status event it handles."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from services.notifier.state import Store
from services.notifier.webhooks.handlers import deliveries, event_type, image_data, pack_data
from shared.consumer import OrderedConsumer, Record
from shared.errors import InvalidMessage
from shared.events import Decoder, PackStatus
from shared.kafka import Outgoing, Publisher
from shared.settings import CommonSettings
from shared.topics import PACKS_STATUS
from shared.webhook_endpoints import WebhookEndpoints

log = logging.getLogger("packline.webhooks.dispatch")
STORE_WAIT_S = 30.0  # past this, the snapshot is made from the status event alone


def group_id(topic_prefix: str) -> str:
    return f"{topic_prefix}packline-webhooks-dispatch"


class Dispatcher:
    def __init__(self, settings: CommonSettings, store: Store, endpoints: WebhookEndpoints, publisher: Publisher) -> None:
        self.settings, self.store, self.endpoints, self.publisher = settings, store, endpoints, publisher
        self._decode = Decoder(PACKS_STATUS.events)
        self.consumer = OrderedConsumer(
            settings.kafka, group_id(settings.topic_prefix), [settings.topics.packs_status], self.handle,
            before_commit=publisher.flush,
        )

    async def start(self) -> None:
        await self.consumer.start()

    async def stop(self) -> None:
        await self.consumer.stop()

    async def handle(self, record: Record) -> None:
        await self.endpoints.ready.wait()  # the endpoints registered so far are all known
        if not self.endpoints.index.endpoints:
            return  # nobody to tell: not even decoded (every status event passes here)
        try:
            ev = self._decode(record.value)
        except InvalidMessage:
            return  # the notifier's feed sends it to invalid.dlq; nothing to deliver
        kind = event_type(ev)
        if kind is None:
            return
        if not self.endpoints.index.subscribed(ev.user_id, kind):
            return
        if isinstance(ev, PackStatus):
            data = pack_data(ev, await self._snapshot(record, str(ev.pack_id)))
        else:
            data = image_data(ev)
        out = [Outgoing.of(self.settings.topics.webhooks_deliveries, d, d.endpoint_id)
               for d in deliveries(ev, kind, data, self.endpoints.index)]
        await self.publisher.enqueue(out)

    async def _snapshot(self, record: Record, pack_id: str) -> dict[str, Any] | None:
        """The notifier's snapshot of the pack once its store has applied `record`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STORE_WAIT_S
        while self.store.applied.get(record.partition, 0) <= record.offset:
            if loop.time() > deadline:
                log.warning("the notifier's store is behind %s[%s]@%s: a snapshot from the event alone",
                            record.topic, record.partition, record.offset)
                return None
            await asyncio.sleep(0.05)
        found = self.store.snapshot_of(pack_id)
        if found is None:
            return None
        snapshot: dict[str, Any] = json.loads(found[0])
        return snapshot
