"""What the api instances agree on through Kafka, with no shared database:

- `IdempotencyFeed` follows `api.idempotency` (the first body of each Idempotency-Key),
  and claims a new key: publish the claim, read the topic up to it, and see whose claim
  came first in the log;
- `ApiInstances` publishes this instance's heartbeat on `api.instances` and follows the
  others', so each instance knows its share of the per-user rate limit.

Both are read to their end before the api serves a pack request (fail closed with 503)."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from datetime import datetime, timedelta

from services.api.limits import IdempotencyIndex
from shared.consumer import FeedReader, Record
from shared.errors import BrokerUnavailable, InvalidMessage
from shared.events import ApiInstanceSeen, Decoder, IdempotencyClaimed, utcnow
from shared.kafka import KafkaConfig, Outgoing, Publisher
from shared.topics import API_IDEMPOTENCY, API_INSTANCES

log = logging.getLogger("packline.api.coordination")


def claim_key(user_id: str, idempotency_key: str) -> str:
    return f"{user_id}/{idempotency_key}"


class IdempotencyFeed(FeedReader):
    name = "idempotency"

    def __init__(self, kafka: KafkaConfig, topic: str, publisher: Publisher, timeout_s: float) -> None:
        super().__init__(kafka, topic, "packline-api-idempotency")
        self.publisher, self.timeout_s = publisher, timeout_s
        self.index = IdempotencyIndex()
        self.upto: dict[int, int] = {}  # partition -> the next offset to read
        self.records = 0
        self._moved = asyncio.Event()
        self._decode = Decoder(API_IDEMPOTENCY.events)
        self._repairs: set[asyncio.Task[None]] = set()

    def handle(self, records: list[Record]) -> None:
        for m in records:
            try:
                ev = self._decode(m.value)
            except InvalidMessage as exc:
                self.poisoned(m, exc)
                continue
            assert m.value is not None
            self.index.apply(ev, m.value)
        if records:
            self.upto[records[-1].partition] = records[-1].offset + 1
            self.records += len(records)
        self._moved.set()
        self._moved = asyncio.Event()
        if self.ready.is_set():
            self._repair()

    def on_ready(self) -> None:
        log.info("idempotency keys read to the end: %d records, %d keys", self.records, len(self.index.first))
        self._repair()

    def _repair(self) -> None:
        """A losing claim is the newest record of its key: publish the winner's record
        again after it (every instance that reads the conflict does; the copies are the
        same record, so compaction keeps the winner whichever comes last)."""
        conflicts = self.index.take_conflicts()
        if not conflicts:
            return
        messages = [Outgoing(self.topic, raw, claim_key(*key).encode()) for key, raw in conflicts.items()]
        task = asyncio.get_running_loop().create_task(self._send(messages))
        self._repairs.add(task)
        task.add_done_callback(self._repairs.discard)

    async def _send(self, messages: list[Outgoing]) -> None:
        try:
            await self.publisher.send(messages)
        except BrokerUnavailable as exc:  # the next start finds the conflict again and retries
            log.warning("could not re-publish %d winning idempotency claims: %s", len(messages), exc)

    async def claim(self, ev: IdempotencyClaimed) -> bool:
        """Publish the claim, read the topic up to it, and say whether this body is the one
        the key was first used with (False: another body came first, even by a moment on
        another instance). BrokerUnavailable when Kafka does not take or return it in time."""
        [future] = await self.publisher.enqueue(
            [Outgoing.of(self.topic, ev, claim_key(ev.user_id, ev.idempotency_key))], keep=False,
        )
        await self.publisher.wait([future])
        meta = future.result()
        await self._read_past(meta.partition, meta.offset)
        return self.index.check(ev.user_id, ev.idempotency_key, ev.request_hash)

    async def _read_past(self, partition: int, offset: int) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        while self.upto.get(partition, 0) <= offset:
            remaining = deadline - loop.time()
            try:
                if remaining <= 0:
                    raise TimeoutError
                await asyncio.wait_for(self._moved.wait(), remaining)
            except TimeoutError as exc:
                raise BrokerUnavailable(f"idempotency claim at {partition}@{offset} not read back in time") from exc

    async def stop(self) -> None:
        if self._repairs:
            await asyncio.wait(list(self._repairs), timeout=2)
        await super().stop()


class ApiInstances(FeedReader):
    """The live api instances: every instance publishes a heartbeat every `heartbeat_s`
    and counts the instances heard from within `ttl_s` (itself always included). A
    clean stop publishes `leaving`, so the others take back its share at once; a killed
    instance is counted until its last heartbeat is `ttl_s` old (meanwhile the others
    allow less, never more)."""

    name = "api-instances"

    def __init__(self, kafka: KafkaConfig, topic: str, publisher: Publisher, heartbeat_s: float, ttl_s: float) -> None:
        super().__init__(kafka, topic, "packline-api-instances")
        self.publisher, self.heartbeat_s, self.ttl = publisher, heartbeat_s, timedelta(seconds=ttl_s)
        self.instance_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.started_at = utcnow()
        self.last_seen: dict[str, datetime] = {}
        self._decode = Decoder(API_INSTANCES.events)
        self._beat: asyncio.Task[None] | None = None

    def handle(self, records: list[Record]) -> None:
        for m in records:
            try:
                self.apply(self._decode(m.value))
            except InvalidMessage as exc:
                self.poisoned(m, exc)

    def apply(self, ev: ApiInstanceSeen) -> None:
        if ev.leaving:
            self.last_seen.pop(ev.instance_id, None)
        elif ev.occurred_at > self.last_seen.get(ev.instance_id, ev.occurred_at - self.ttl):
            self.last_seen[ev.instance_id] = ev.occurred_at

    def live(self, now: datetime | None = None) -> int:
        now = now or utcnow()
        for instance, seen in list(self.last_seen.items()):
            if now - seen > self.ttl:
                del self.last_seen[instance]
        return 1 + sum(1 for instance in self.last_seen if instance != self.instance_id)

    def share(self) -> float:
        """This instance's share of the per-user rate limit."""
        return 1.0 / self.live()

    async def start(self) -> None:
        await super().start()
        self._beat = asyncio.get_running_loop().create_task(self._heartbeats(), name="api-heartbeat")

    async def _heartbeats(self) -> None:
        while True:
            await self._publish(leaving=False)
            await asyncio.sleep(self.heartbeat_s)

    async def _publish(self, leaving: bool) -> None:
        ev = ApiInstanceSeen(instance_id=self.instance_id, started_at=self.started_at, leaving=leaving)
        try:
            await self.publisher.send([Outgoing.of(self.topic, ev, self.instance_id)])
        except BrokerUnavailable as exc:
            log.warning("could not publish the api heartbeat: %s", exc)

    async def stop(self) -> None:
        if self._beat is not None:
            self._beat.cancel()
            await asyncio.gather(self._beat, return_exceptions=True)
            await self._publish(leaving=True)
        await super().stop()
