"""The provider switch: every generation process follows `generation.control` (compacted,
read from its start) and pauses or resumes its provider limiter as the newest record says,
so an operator's pause stops new provider calls cluster-wide (jobs wait in the limiter,
nothing fails) and a process started during an outage starts paused."""

from __future__ import annotations

import logging

from prometheus_client import Gauge

from services.generation.scheduling import ProviderLimiter
from shared.consumer import EventFeed
from shared.events import ProviderControl
from shared.kafka import KafkaConfig

log = logging.getLogger("packline.generation")
PAUSED = Gauge("packline_provider_paused", "1 while an operator has paused provider calls")
HELD = Gauge("packline_provider_held", "image jobs waiting for provider calls to be resumed")


class ControlFeed(EventFeed[ProviderControl]):
    name = "generation-control"

    def __init__(self, kafka: KafkaConfig, topic: str, limiter: ProviderLimiter) -> None:
        super().__init__(kafka, topic, "packline-generation-control", (ProviderControl,))
        self.limiter = limiter
        self.latest: ProviderControl | None = None
        HELD.set_function(lambda: limiter.held)

    def apply(self, event: ProviderControl) -> None:
        self.latest = event
        if event.paused:
            self.limiter.pause()
        else:
            self.limiter.resume()
        PAUSED.set(1 if event.paused else 0)
        if self.ready.is_set():
            log.warning("provider calls %s by %s: %s", "paused" if event.paused else "resumed", event.operator,
                        event.reason or "-")
