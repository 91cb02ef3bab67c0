"""The provider switch: every generation process follows `generation.control` (compacted,
read from its start) and pauses or resumes its provider limiter as the newest record says,
so an operator's pause stops new provider calls cluster-wide (jobs wait in the limiter,
nothing fails) and a process started during an outage starts paused."""

from __future__ import annotations

import logging

from prometheus_client import Gauge

from services.generation.scheduling import ProviderLimiter
from shared.consumer import FeedReader, Record
from shared.errors import InvalidMessage
from shared.events import Decoder, ProviderControl
from shared.kafka import KafkaConfig

log = logging.getLogger("packline.generation")
PAUSED = Gauge("packline_provider_paused", "1 while an operator has paused provider calls")
HELD = Gauge("packline_provider_held", "image jobs waiting for provider calls to be resumed")


class ControlFeed(FeedReader):
    name = "generation-control"

    def __init__(self, kafka: KafkaConfig, topic: str, limiter: ProviderLimiter) -> None:
        super().__init__(kafka, topic, "packline-generation-control")
        self.limiter = limiter
        self.decode = Decoder((ProviderControl,))
        self.latest: ProviderControl | None = None
        HELD.set_function(lambda: limiter.held)

    def handle(self, records: list[Record]) -> None:
        for record in records:
            try:
                ev = self.decode(record.value)
            except InvalidMessage as exc:
                self.poisoned(record, exc)
                continue
            self.latest = ev
            if ev.paused:
                self.limiter.pause()
            else:
                self.limiter.resume()
            PAUSED.set(1 if ev.paused else 0)
            if self.ready.is_set():
                log.warning("provider calls %s by %s: %s", "paused" if ev.paused else "resumed", ev.operator, ev.reason or "-")
