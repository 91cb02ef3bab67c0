"""The cancel feed: every generation process reads `packs.cancelled` (a day of it, from its
start) and tells its job runner, which stops the pack's work (jobs.py `cancel_pack`)."""

from __future__ import annotations

from services.generation.jobs import JobRunner
from shared.consumer import EventFeed
from shared.events import PackCancelled
from shared.kafka import KafkaConfig


class CancelFeed(EventFeed[PackCancelled]):
    name = "packs-cancelled"

    def __init__(self, kafka: KafkaConfig, topic: str, runner: JobRunner) -> None:
        super().__init__(kafka, topic, "packline-generation-cancels", (PackCancelled,))
        self.runner = runner

    def apply(self, event: PackCancelled) -> None:
        # Read back at start, a cancel was seen to when it was new: only the pack's jobs matter now.
        self.runner.cancel_pack(str(event.pack_id), event.delivered, live=self.ready.is_set())
