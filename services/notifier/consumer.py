"""Feeds the store from `packs.status`. No consumer group: every notifier instance reads
every partition itself, so any instance serves any pack and the SSE ids are the same
everywhere.

With a read model, a start goes on from the checkpoint stored with the snapshots (from
offset 0 when the file is new), not from the beginning of the log; what the store changes
is written back with the new checkpoint every `flush_s`, in one transaction, in a worker
thread. `HistoryReader` re-reads one pack's records when a client resumes from an id that
memory no longer holds."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from pydantic import ValidationError

from services.notifier import observe
from services.notifier.state import PackView, Store
from shared.consumer import ConsumerLoop, read_from_start
from shared.errors import InvalidMessage
from shared.events import Decoder, ImageStatus, PackStatus
from shared.kafka import KafkaConfig
from shared.poison import DeadLetters
from shared.topics import PACKS_STATUS, PackFeed

log = logging.getLogger("packline.notifier")


class FeedDecoder:
    """`Decoder(PACKS_STATUS.events)` with the same results, sooner: the model is picked by
    the type as the services write it (no union to try), anything else goes the general way.
    Catching up on a long topic is mostly decoding."""

    MODELS: tuple[tuple[bytes, type[PackStatus] | type[ImageStatus]], ...] = (
        (b'"type":"image.status"', ImageStatus), (b'"type":"pack.status"', PackStatus),
    )

    def __init__(self) -> None:
        self._general = Decoder(PACKS_STATUS.events)

    def __call__(self, raw: bytes | None) -> PackFeed:
        if raw is not None:
            for marker, model in self.MODELS:
                if marker in raw:
                    try:
                        event = model.model_validate_json(raw)
                    except ValidationError:
                        break
                    if {"type", "version"} <= event.model_fields_set:
                        return event
                    break
        return self._general(raw)


class StatusFeed(ConsumerLoop):
    name = "status-feed"
    max_records = 5000
    flush_packs = 5_000  # write sooner when this many packs changed (catching up): bounds memory
    fetch_bytes = (1 << 20, 8 << 20)  # per partition, per fetch: enough to catch up, little to hold
    dead_letters: DeadLetters | None = None  # where malformed records go (invalid.dlq)

    def __init__(self, kafka: KafkaConfig, topic: str, store: Store, flush_s: float = 0.5) -> None:
        self.kafka, self.topic, self.store, self.flush_s = kafka, topic, store, flush_s
        self.ready = asyncio.Event()
        self.started_at = time.monotonic()
        self.ready_after_s: float | None = None
        self.records = 0  # read since start
        self._catch_up_to: dict[TopicPartition, int] = {}
        self._decode = FeedDecoder()
        self._writing: asyncio.Task[None] | None = None
        self._last_write = time.monotonic()
        self._written: dict[int, int] = {}  # the checkpoint last written
        # One thread writes, always the same: SQLite's memory stays in one malloc arena.
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="notifier-read-model")

    async def start(self) -> None:
        self.started_at = time.monotonic()
        consumer, tps = await read_from_start(
            self.kafka, self.topic, "packline-notifier", max_partition_fetch_bytes=self.fetch_bytes[0],
            fetch_max_bytes=self.fetch_bytes[1],
        )
        try:
            ends = await consumer.end_offsets(tps)
            begins = await consumer.beginning_offsets(tps)
            model = self.store.model
            checkpoint = self.store.resume()
            if model is not None and any(checkpoint.get(tp.partition, 0) > ends[tp] for tp in tps):
                # Offsets past the end: the topic was made again since. Its file says nothing about it.
                log.warning("%s is behind the read model's checkpoint %s: rebuilding %s", self.topic, checkpoint, model.path)
                model.reset()
                checkpoint = self.store.resume()
            for tp in tps:
                start = checkpoint.get(tp.partition, 0)
                if start < begins[tp]:
                    if start > 0:
                        log.warning("%s[%d]: records %d..%d expired before this notifier applied them",
                                    self.topic, tp.partition, start, begins[tp] - 1)
                    start = begins[tp]
                if start > 0:
                    consumer.seek(tp, start)
                self.store.applied[tp.partition] = start
        except BaseException:
            await consumer.stop()
            raise
        self.consumer, self._catch_up_to = consumer, ends
        self.store.render = False  # nobody is served until caught up
        log.info("notifier starting from %s with %d live packs in memory; catching up to %s",
                 {tp.partition: self.store.applied[tp.partition] for tp in tps}, len(self.store.packs),
                 {tp.partition: end for tp, end in ends.items()})
        self.spawn()

    async def stop(self) -> None:
        await self.halt()
        if self._writing is not None:
            await asyncio.gather(self._writing, return_exceptions=True)
        try:
            await self.flush()  # what a restart would otherwise read again
        except Exception:
            log.exception("could not write the read model on the way out; it is read again from Kafka at start")
        if self.consumer is not None:
            await self.consumer.stop()
        self._writer.shutdown()

    async def _check_ready(self) -> None:
        assert self.consumer is not None
        if self.ready.is_set():
            return
        for tp, end in self._catch_up_to.items():
            if await self.consumer.position(tp) < end:
                return
        self.store.render = True
        self.ready_after_s = time.monotonic() - self.started_at
        log.info("notifier caught up with %s in %.2f s: %d records read, %d packs in memory",
                 self.topic, self.ready_after_s, self.records, len(self.store.packs))
        self.ready.set()

    async def step(self) -> None:
        assert self.consumer is not None
        batches = await self.consumer.getmany(timeout_ms=200 if self.ready.is_set() else 50, max_records=self.max_records)
        for messages in batches.values():
            self.records += len(messages)
            for m in messages:
                self.store.at(m.partition, m.offset)
                try:
                    event: PackFeed = self._decode(m.value)
                except InvalidMessage as exc:
                    log.warning("skipping %s[%s]@%s: %s", m.topic, m.partition, m.offset, exc)
                    if self.dead_letters is not None:
                        self.dead_letters.add(m, str(exc))
                    continue
                observe.apply(self.store, m, event, self.ready.is_set())
        await self._check_ready()
        await self._write_back()

    async def _write_back(self) -> None:
        """Start a write when one is due; wait for the one under way when changes pile up."""
        if self.store.model is None:
            return
        if self._writing is not None:
            if not self._writing.done() and len(self.store.dirty) < 2 * self.flush_packs:
                return
            writing, self._writing = self._writing, None
            await writing  # raises what the write raised: logged by the loop, and tried again
        due = time.monotonic() - self._last_write >= self.flush_s
        if len(self.store.dirty) >= self.flush_packs or (due and self._behind()):
            self._writing = asyncio.create_task(self.flush(), name="notifier-read-model-write")
        elif due:
            self.store.evict()  # also what on-demand loads brought into memory

    def _behind(self) -> bool:
        return bool(self.store.dirty) or self.store.applied != self._written

    async def flush(self) -> None:
        """Write what changed and the checkpoint covering it (one transaction, in a worker
        thread), then forget what memory may forget."""
        model = self.store.model
        if model is None:
            return
        self._last_write = time.monotonic()
        rows, checkpoint = self.store.take_changes()
        if not rows and checkpoint == self._written:
            self.store.evict()
            return
        try:
            await asyncio.get_running_loop().run_in_executor(self._writer, model.write, rows, checkpoint)
        except BaseException:
            self.store.not_written(rows)
            raise
        self._written = checkpoint
        self.store.evict()


class HistoryReader:
    """Re-reads one pack's records from `packs.status` (its partition, at the offsets the
    store kept) and replays them through a scratch store: the same code, in the same
    order, so the same SSE ids and the same data as when they were first applied. Gone
    from Kafka (retention), or not done within `timeout_s`: the caller gets a resync."""

    def __init__(self, kafka: KafkaConfig, topic: str, history_limit: int, timeout_s: float = 5.0) -> None:
        self.kafka, self.topic, self.history_limit, self.timeout_s = kafka, topic, history_limit, timeout_s
        self.consumer: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()
        self._decode = FeedDecoder()
        self.restored = 0

    async def stop(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()
            self.consumer = None

    async def restore(self, pack: PackView) -> bool:
        async with self._lock:  # one at a time: a resume is rare, and this bounds the cost
            if pack.source is None:
                return True  # restored meanwhile, for another client
            if not pack.offsets:
                return False
            offsets, seq = list(pack.offsets), pack.seq
            try:
                values = await asyncio.wait_for(self._read(pack.partition, offsets), self.timeout_s)
            except (KafkaError, OSError, TimeoutError) as exc:
                log.warning("could not re-read the history of pack %s: %r", pack.pack_id, exc)
                return False
            if values is None or not replay(pack, offsets, values, seq, self.history_limit, self._decode):
                return False
            self.restored += 1
            return True

    async def _read(self, partition: int, offsets: list[int]) -> list[bytes | None] | None:
        """The values at `offsets` of one partition, or None when any of them is gone."""
        tp = TopicPartition(self.topic, partition)
        if self.consumer is None:
            consumer = self.kafka.consumer(
                group_id=None, enable_auto_commit=False, client_id="packline-notifier-history",
                auto_offset_reset="earliest", max_partition_fetch_bytes=1 << 20,
            )
            await consumer.start()
            self.consumer = consumer
        consumer = self.consumer
        consumer.assign([tp])
        if offsets[0] < (await consumer.beginning_offsets([tp]))[tp]:
            return None
        wanted = sorted(set(offsets))
        wanted_set = set(wanted)
        got: dict[int, bytes | None] = {}
        i = 0
        while i < len(wanted):
            consumer.seek(tp, wanted[i])
            batch = (await consumer.getmany(tp, timeout_ms=1000)).get(tp, [])
            for record in batch:
                if record.offset in wanted_set:
                    got[record.offset] = record.value
            if not batch:
                continue
            while i < len(wanted) and wanted[i] <= batch[-1].offset:
                if wanted[i] not in got:
                    return None  # deleted meanwhile
                i += 1
        return [got[o] for o in offsets]


def replay(
    pack: PackView, offsets: list[int], values: list[bytes | None], seq: int, history_limit: int,
    decode: Callable[[bytes | None], PackFeed],
) -> bool:
    """Apply a pack's records (its partition, at `offsets`, taken when its sequence number
    was `seq`) to a scratch store, and give the pack the history rendered there."""
    scratch = Store(history_limit)
    for offset, value in zip(offsets, values, strict=True):
        scratch.at(pack.partition, offset)
        try:
            scratch.apply(decode(value))
        except InvalidMessage:
            return False
    replayed = scratch.packs.get(pack.pack_id)
    if replayed is None or replayed.seq != seq:
        log.warning("history of pack %s re-read to seq %s, not %s", pack.pack_id, replayed and replayed.seq, seq)
        return False
    pack.restored(replayed.history, replayed.trimmed, seq, history_limit)
    return True
