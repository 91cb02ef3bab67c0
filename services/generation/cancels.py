"""The cancel feed: every generation process reads `packs.cancelled` (a day of it, from its
start) and tells its job runner, which stops the pack's work (jobs.py `cancel_pack`)."""

from __future__ import annotations

from services.generation.jobs import JobRunner
from shared.consumer import FeedReader, Record
from shared.errors import InvalidMessage
from shared.events import Decoder, PackCancelled
from shared.kafka import KafkaConfig


class CancelFeed(FeedReader):
    name = "packs-cancelled"

    def __init__(self, kafka: KafkaConfig, topic: str, runner: JobRunner) -> None:
        super().__init__(kafka, topic, "packline-generation-cancels")
        self.runner = runner
        self.decode = Decoder((PackCancelled,))

    def handle(self, records: list[Record]) -> None:
        for record in records:
            try:
                ev = self.decode(record.value)
            except InvalidMessage as exc:
                self.poisoned(record, exc)
                continue
            # Read back at start, a cancel was seen to when it was new: only the pack's jobs matter now.
            self.runner.cancel_pack(str(ev.pack_id), ev.delivered, live=self.ready.is_set())
