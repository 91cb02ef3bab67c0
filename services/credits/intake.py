"""packs.requested, served in turns: requests are read ahead into per-user queues and
handled one user after another, so one party's backlog in a partition does not hold back
everybody whose requests share it (the head-of-line blocking a log-order consumer has).

A user (or a publishing service) with too many requests already waiting gets the next
ones REJECTED at once, with the reason, through the ledger like any other outcome: the
flood is bounded and every request still reaches a terminal status.

Requests are handled in batches taken in that fair order (one ledger transaction each;
the ledger is one writer on SQLite anyway), in arrival order per user; their effects are
enqueued, and a partition's offset is committed only up to its oldest request not yet
handled, after those effects are acknowledged. Nothing waits for a batch to fill: a
batch is whatever is waiting, up to INTAKE_BATCH.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiokafka import TopicPartition
from prometheus_client import Gauge

from services.credits.settings import Settings
from shared import tracing
from shared.consumer import ConsumerLoop, Rebalance, Record, group_member
from shared.events import PackRequested
from shared.fairness import FairQueue, OffsetTracker
from shared.kafka import Publisher
from shared.topics import PACKS_REQUESTED
from shared.worker import decode_or_dead_letter, handle

log = logging.getLogger("packline.intake")
QUEUED = Gauge("packline_intake_queued", "pack requests read ahead and waiting for credits")
USERS = Gauge("packline_intake_queued_users", "users with pack requests waiting")
Batch = list[tuple[PackRequested, str | None]]  # (request, refusal reason or None)
Handler = Callable[[Batch], Awaitable[None]]


@dataclass(frozen=True)
class Waiting:
    tp: TopicPartition
    record: Record
    request: PackRequested
    refusal: str | None


class Intake(ConsumerLoop):
    name = "intake"
    commit_every_s = 0.2

    def __init__(self, settings: Settings, publisher: Publisher, handler: Handler) -> None:
        self.settings, self.publisher, self.handler = settings, publisher, handler
        self.topic = settings.topics.name(PACKS_REQUESTED)
        self.group = f"{settings.topic_prefix}packline-credits-intake"
        self.queue: FairQueue[Waiting] = FairQueue()
        self.refused: deque[Waiting] = deque()  # over a limit: answered ahead of the turns, they are cheap
        self.offsets: OffsetTracker[TopicPartition] = OffsetTracker()
        self.per_user: Counter[str] = Counter()
        self.per_source: Counter[str] = Counter()
        self._work = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._last_commit = 0.0

    async def start(self) -> None:
        self.consumer = group_member(self.settings.kafka, self.group)
        await self.consumer.start()
        self.consumer.subscribe([self.topic], listener=Rebalance(revoked=self._revoked))
        self._worker = asyncio.create_task(self._serve(), name="intake-worker")
        self.spawn()

    async def stop(self) -> None:
        await self.halt()
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self._commit(force=True)
        await super().stop()

    async def step(self) -> None:
        assert self.consumer is not None
        await self.read_ahead(self.queue.__len__, self.settings.intake_prefetch)
        batches = await self.consumer.getmany(timeout_ms=100, max_records=1000)
        for tp, records in batches.items():
            for record in records:
                self.offsets.fetched(tp, record.offset)
                request = await decode_or_dead_letter(record, PACKS_REQUESTED, self.publisher, self.settings)
                if request is None:  # on invalid.dlq now
                    self.offsets.done(tp, record.offset)
                    continue
                self._admit(Waiting(tp, record, request, self._refusal(request)))
        QUEUED.set(len(self.queue))
        USERS.set(self.queue.users)
        await self._commit()

    def _refusal(self, request: PackRequested) -> str | None:
        s = self.settings
        if self.per_user[request.user_id] >= s.intake_max_queued_per_user:
            return (f"too many pack requests waiting: {self.per_user[request.user_id]} of user {request.user_id} "
                    f"(limit {s.intake_max_queued_per_user}); try again later")
        if request.source and self.per_source[request.source] >= s.intake_max_queued_per_source:
            return (f"too many pack requests waiting from {request.source!r}: {self.per_source[request.source]} "
                    f"(limit {s.intake_max_queued_per_source}); try again later")
        return None

    def _admit(self, item: Waiting) -> None:
        if item.refusal:
            self.refused.append(item)
        else:
            self.queue.put(item.request.user_id, item)
            self.per_user[item.request.user_id] += 1
            if item.request.source:
                self.per_source[item.request.source] += 1
        self._work.set()

    def _take(self) -> list[Waiting]:
        """Up to INTAKE_BATCH waiting requests: the refused first (they are cheap), then in turns."""
        batch: list[Waiting] = []
        while len(batch) < self.settings.intake_batch:
            item = self.refused.popleft() if self.refused else self.queue.pop()
            if item is None:
                break
            batch.append(item)
        return batch

    async def _serve(self) -> None:
        while True:
            batch = self._take()
            if not batch:
                self._work.clear()
                await self._work.wait()
                continue
            try:
                try:
                    with tracing.per_pack([(str(w.request.pack_id), w.record) for w in batch]):
                        await self.handler([(w.request, w.refusal) for w in batch])
                except asyncio.CancelledError:
                    raise
                except Exception:
                    # One request is at fault, or a dependency blinked: one at a time, under the
                    # failure policy every message gets (retry, wait for Kafka, or dead-letter).
                    log.warning("a batch of %d pack requests failed; handling them one by one", len(batch), exc_info=True)
                    for w in batch:
                        await handle(w.request, w.record, self._one(w.refusal), self.publisher, self.settings)
                for w in batch:
                    self.offsets.done(w.tp, w.record.offset)
            finally:
                for w in batch:
                    if not w.refusal:
                        self._release(w.request)

    def _one(self, refusal: str | None) -> Callable[[PackRequested, Record], Awaitable[None]]:
        async def run(request: PackRequested, _record: Record) -> None:
            await self.handler([(request, refusal)])

        return run

    def _release(self, request: PackRequested) -> None:
        self.per_user[request.user_id] -= 1
        if self.per_user[request.user_id] <= 0:
            del self.per_user[request.user_id]
        if request.source:
            self.per_source[request.source] -= 1
            if self.per_source[request.source] <= 0:
                del self.per_source[request.source]

    async def _commit(self, force: bool = False) -> None:
        """Everything handled so far had its effects enqueued: acknowledge them, then commit."""
        assert self.consumer is not None
        if not force and time.monotonic() - self._last_commit < self.commit_every_s:
            return
        self._last_commit = time.monotonic()
        offsets = self.offsets.committable(self.consumer.assignment())
        if not offsets:
            return
        try:
            await self.publisher.flush()
        except Exception:
            # Some handled requests' effects may be lost: read everything after the last commit again.
            await self._rewind()
            raise
        try:
            await self.consumer.commit(offsets)
            self.offsets.committed(offsets)
        except Exception as exc:  # a rebalance in progress: the next owner reads these again
            log.info("commit of %s deferred: %r", offsets, exc)

    async def _rewind(self) -> None:
        assert self.consumer is not None
        owned = list(self.consumer.assignment())
        self._drop(owned)
        for tp in owned:
            committed = await self.consumer.committed(tp)
            if committed is None:
                await self.consumer.seek_to_beginning(tp)
            else:
                self.consumer.seek(tp, committed)

    async def _revoked(self, revoked: list[TopicPartition]) -> None:
        with contextlib.suppress(Exception):
            await self._commit(force=True)
        self._drop(revoked)

    def _drop(self, partitions: list[TopicPartition]) -> None:
        """Forget what was read of these partitions: whoever reads them next starts at the commit."""
        gone = set(partitions)
        kept = deque(w for w in self.refused if w.tp not in gone)
        self.refused = kept
        dropped = self.queue.remove(lambda w: w.tp in gone)
        for w in dropped:
            self._release(w.request)
        self.offsets.forget(gone)
        if dropped:
            log.info("handed back %d queued pack requests", len(dropped))
