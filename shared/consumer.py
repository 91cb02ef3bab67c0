"""Reading Kafka. `OrderedConsumer` is what every worker reads its topics with: a
consumer-group member that handles each partition strictly in order, partitions side by
side, and commits an offset only after every message before it was handled and its
effects acknowledged. `ConsumerLoop` is the background task under every reader.

aiokafka runs a rebalance inside `getmany`, that is between two batches, so no message is
being handled while partitions move; a commit that fails because a rebalance started in
the meantime only means messages are read again, and every handler is idempotent.
(Not faust-streaming agents: faust 0.15.3's commit bookkeeping can commit past a message
still being processed after a rebalance; docs/architecture.md, "Offsets".)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeAlias, TypeVar

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import ConsumerRecord

from shared.admin import partitions_of
from shared.errors import InvalidMessage
from shared.events import Decoder, Event
from shared.kafka import KafkaConfig

if TYPE_CHECKING:
    from shared.poison import DeadLetters

log = logging.getLogger("packline.consumer")

Record: TypeAlias = "ConsumerRecord[bytes, bytes]"
OnRebalance = Callable[[list[TopicPartition]], Awaitable[None]]
ROOM_CHECK_S = 0.005  # how often a full read-ahead buffer is looked at
FULL_POLL_S = 1.0  # how long a full buffer goes without a poll


def group_member(kafka: KafkaConfig, group: str) -> AIOKafkaConsumer:
    """A consumer-group member as every packline reader is one: manual commits, from the
    start of a new group, and a short session so a SIGKILLed member's partitions move
    within seconds."""
    return kafka.consumer(
        group_id=group, client_id=f"{group}-consumer", enable_auto_commit=False,
        auto_offset_reset="earliest", session_timeout_ms=10_000, heartbeat_interval_ms=1_000,
    )


async def _nothing(_partitions: list[TopicPartition]) -> None:
    pass


class Rebalance(ConsumerRebalanceListener):
    """Callbacks run inside `getmany` while partitions move: revoked ones before the new
    owner can fetch, assigned ones before anything is read from them."""

    def __init__(self, revoked: OnRebalance = _nothing, assigned: OnRebalance = _nothing) -> None:
        self.revoked, self.assigned = revoked, assigned

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self.revoked(list(revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self.assigned(list(assigned))


class ConsumerLoop:
    """An aiokafka consumer driven by one background task: `step()` runs forever, an error
    is logged and the loop carries on, `stop()` cancels it and closes the consumer."""

    name = "consumer-loop"
    consumer: AIOKafkaConsumer | None = None
    _task: asyncio.Task[None] | None = None

    async def step(self) -> None:
        raise NotImplementedError

    def spawn(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def read_ahead(self, queued: Callable[[], int], limit: int) -> None:
        """Back-pressure for a read-ahead buffer: while `limit` messages wait in it, wait for
        room rather than poll. Not by pausing the partitions: aiokafka drops the records it
        has fetched for a paused partition and fetches them again once it is resumed, so a
        buffer kept at its limit that way reads every message many times over (with 9,000
        image jobs queued, that was most of the broker's and the consumer's CPU). Not
        polling is enough: the fetcher holds at most one unread response per partition. A
        buffer still full after FULL_POLL_S is paused and polled, so that the group neither
        takes this member for gone nor waits on it through a rebalance."""
        assert self.consumer is not None
        waited = 0.0
        while queued() >= limit and waited < FULL_POLL_S:
            await asyncio.sleep(ROOM_CHECK_S)
            waited += ROOM_CHECK_S
        if queued() >= limit:
            self.consumer.pause(*self.consumer.assignment())
        elif self.consumer.paused():
            self.consumer.resume(*self.consumer.paused())

    async def stop(self) -> None:
        await self.halt()
        if self.consumer is not None:
            await self.consumer.stop()

    async def halt(self) -> None:
        """Stop stepping, keep the consumer (a subclass may still commit before `stop`)."""
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s failed; carrying on", self.name)
                await asyncio.sleep(1)


async def read_from_start(
    kafka: KafkaConfig, topic: str, client_id: str, **options: Any,
) -> tuple[AIOKafkaConsumer, list[TopicPartition]]:
    """A group-less consumer on every partition of `topic`, positioned at the beginning
    (`options`: more aiokafka consumer settings)."""
    consumer = kafka.consumer(group_id=None, enable_auto_commit=False, client_id=client_id, **options)
    try:
        await consumer.start()
        tps = await partitions_of(kafka, topic)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
    except BaseException:
        await consumer.stop()
        raise
    return consumer, tps


class FeedReader(ConsumerLoop):
    """A group-less reader of every partition of one topic, from the beginning, followed
    for ever (the key revocations, the key registry). `ready` is set once it has
    read up to the end offsets taken at start: what was on the topic then is applied, so
    the state may be trusted. `handle` gets each partition's records in order."""

    max_records = 2_000  # per step: the event loop answers requests (503s) between steps
    dead_letters: DeadLetters | None = None

    def __init__(self, kafka: KafkaConfig, topic: str, client_id: str) -> None:
        self.kafka, self.topic, self.client_id = kafka, topic, client_id
        self.ready = asyncio.Event()
        self._catch_up_to: dict[TopicPartition, int] = {}

    def handle(self, records: list[Record]) -> None:
        raise NotImplementedError

    def poisoned(self, record: Record, exc: Exception) -> None:
        """A record `handle` could not read: skipped, and sent to invalid.dlq when the
        service gave this reader `dead_letters` (`shared.poison`). Tombstones are skipped quietly."""
        if record.value is None:
            return  # a tombstone: what compaction leaves of a deleted key, not a malformed message
        log.warning("%s: skipping %s[%s]@%s: %s", self.name, self.topic, record.partition, record.offset, exc)
        if self.dead_letters is not None:
            self.dead_letters.add(record, str(exc))

    def on_ready(self) -> None:
        """Called once, when `ready` is set."""

    async def start(self) -> None:
        """Returns at once: connecting and catching up happen in the background (a failed
        attempt is logged and tried again), and `ready` says when they are done."""
        self.spawn()

    async def _connect(self) -> None:
        # Large fetches: catching up on a long topic is many records per round trip.
        consumer, tps = await read_from_start(
            self.kafka, self.topic, self.client_id, max_partition_fetch_bytes=8 << 20, fetch_max_bytes=64 << 20,
        )
        try:
            ends = await consumer.end_offsets(tps)
        except BaseException:
            await consumer.stop()
            raise
        self.consumer, self._catch_up_to = consumer, ends
        await self._check_ready()

    async def _check_ready(self) -> None:
        assert self.consumer is not None
        if self.ready.is_set():
            return
        for tp, end in self._catch_up_to.items():
            if await self.consumer.position(tp) < end:
                return
        self.ready.set()
        self.on_ready()

    async def step(self) -> None:
        if self.consumer is None:
            await self._connect()
            return
        batches = await self.consumer.getmany(timeout_ms=200 if self.ready.is_set() else 50, max_records=self.max_records)
        for records in batches.values():
            self.handle(records)
        await self._check_ready()


E = TypeVar("E", bound=Event)


class EventFeed(FeedReader, Generic[E]):
    """A FeedReader of one topic's events: each record decoded (one that cannot be is
    `poisoned`) and given to `apply`, in order."""

    def __init__(self, kafka: KafkaConfig, topic: str, client_id: str, accept: tuple[type[E], ...]) -> None:
        super().__init__(kafka, topic, client_id)
        self.decode = Decoder(accept)

    def handle(self, records: list[Record]) -> None:
        for record in records:
            try:
                event = self.decode(record.value)
            except InvalidMessage as exc:
                self.poisoned(record, exc)
                continue
            self.apply(event)

    def apply(self, event: E) -> None:
        raise NotImplementedError


class OrderedConsumer(ConsumerLoop):
    """Commits are deferred (every `commit_every_s`, and before partitions are handed over):
    a handler's effects leave as soon as it returns, and one commit covers many batches, so
    no message waits for a commit round trip of the one before it."""

    commit_every_s = 0.2

    def __init__(
        self, kafka: KafkaConfig, group: str, topics: Sequence[str], handle: Callable[[Record], Awaitable[None]],
        before_commit: Callable[[], Awaitable[None]] | None = None, max_batch: int = 200,
        handle_batch: Callable[[list[Record]], Awaitable[None]] | None = None,
    ) -> None:
        """`before_commit` runs before offsets are committed: a publisher's `flush`, when
        handlers only enqueue their effects. `handle_batch`, if given, takes a poll's records at
        once (one transaction for all of them, say), each partition's in order, instead of
        `handle` one by one."""
        self.kafka, self.group, self.topics, self.handle = kafka, group, list(topics), handle
        self.handle_batch = handle_batch
        self.before_commit, self.max_batch = before_commit, max_batch
        self.name = f"{group}[{','.join(self.topics)}]"
        # Per partition, since the last commit: the first offset handled, and the next one.
        self._from: dict[TopicPartition, int] = {}
        self._handled: dict[TopicPartition, int] = {}
        self._last_commit = 0.0

    async def start(self) -> None:
        self.consumer = group_member(self.kafka, self.group)
        await self.consumer.start()
        self.consumer.subscribe(self.topics, listener=Rebalance(revoked=self._hand_over))
        self.spawn()

    async def stop(self) -> None:
        await self.halt()
        with contextlib.suppress(Exception):
            await self.commit()
        await super().stop()

    async def step(self) -> None:
        assert self.consumer is not None
        batches = await self.consumer.getmany(timeout_ms=100, max_records=self.max_batch)
        if batches:
            try:
                if self.handle_batch is not None:  # the whole poll, each partition's records in order
                    await self.handle_batch([record for records in batches.values() for record in records])
                else:
                    await asyncio.gather(*(self._in_order(records) for records in batches.values()))
            except BaseException:
                # Never let the position run past messages that were not handled: read them again.
                for tp, records in batches.items():
                    self.consumer.seek(tp, records[0].offset)
                raise
            for tp, records in batches.items():
                self._from.setdefault(tp, records[0].offset)
                self._handled[tp] = records[-1].offset + 1
        if self._handled and time.monotonic() - self._last_commit >= self.commit_every_s:
            await self.commit()

    async def commit(self, partitions: set[TopicPartition] | None = None) -> None:
        """Wait for the effects of everything handled, then commit it (for `partitions`, or
        all). If the effects did not all make it, everything since the last commit is read
        and handled again."""
        assert self.consumer is not None
        self._last_commit = time.monotonic()
        offsets = {tp: o for tp, o in self._handled.items() if partitions is None or tp in partitions}
        if not offsets:
            return
        try:
            if self.before_commit is not None:
                await self.before_commit()
        except BaseException:
            # The flush covered every partition's effects, so every partition goes back.
            for tp, first in self._from.items():
                with contextlib.suppress(Exception):
                    self.consumer.seek(tp, first)
            self.forget(list(self._from))
            raise
        try:
            await self.consumer.commit(offsets)
        except Exception as exc:
            # Partitions moved meanwhile: their new owner reads these again (idempotent).
            log.info("%s: commit of %s not taken (%r)", self.name, _fmt(offsets), exc)
        self.forget(offsets)

    async def _hand_over(self, revoked: list[TopicPartition]) -> None:
        try:
            await self.commit(set(revoked))
        except Exception as exc:  # the new owner reads them again; handlers are idempotent
            log.info("%s: no commit before handing over %s: %r", self.name, revoked, exc)
        self.forget(revoked)

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        for tp in list(partitions):
            self._from.pop(tp, None)
            self._handled.pop(tp, None)

    async def _in_order(self, records: list[Record]) -> None:
        for record in records:
            await self.handle(record)


def _fmt(offsets: dict[TopicPartition, int]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]@{o}" for tp, o in sorted(offsets.items()))
