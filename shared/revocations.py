"""Revoked API keys, as the api and the notifier learn them from `auth.revocations`.

An API key carries a generation; revoking a user's keys publishes the lowest generation
still valid. Each process reads the (compacted) topic from the start and follows it, so a
revocation takes effect everywhere within a poll interval, with no shared database."""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaConsumer

from shared.errors import InvalidMessage
from shared.events import KeyRevoked, decode
from shared.kafka import partitions_of

log = logging.getLogger("packline.revocations")


class Revocations:
    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self.min_generation: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None

    def allows(self, user_id: str, generation: int) -> bool:
        return generation >= self.min_generation.get(user_id, 0)

    def apply(self, ev: KeyRevoked) -> None:
        self.min_generation[ev.user_id] = max(self.min_generation.get(ev.user_id, 0), ev.below_generation)

    async def start(self) -> None:
        self.consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False)
        await self.consumer.start()
        tps = await partitions_of(self.bootstrap, self.topic)
        self.consumer.assign(tps)
        await self.consumer.seek_to_beginning(*tps)
        self._task = asyncio.create_task(self._loop(), name="revocations")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            await self.consumer.stop()

    async def _loop(self) -> None:
        while True:
            try:
                batches = await self.consumer.getmany(timeout_ms=500)
                for messages in batches.values():
                    for m in messages:
                        try:
                            ev = decode(m.value, (KeyRevoked,))
                        except InvalidMessage as exc:
                            log.warning("skipping revocation %s@%s: %s", m.partition, m.offset, exc)
                            continue
                        assert isinstance(ev, KeyRevoked)
                        self.apply(ev)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("revocation feed failed; carrying on")
                await asyncio.sleep(1)
