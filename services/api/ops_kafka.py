"""What the ops console reads from Kafka (the api keeps no database): the provider switch
(`generation.control`, followed), a pack's timeline (bounded scans of one partition),
lag and depth per topic (`shared.metrics.KafkaGauges`, every group of the deployment).

A pack's timeline is read from the logs themselves, not asked of another service: its
status events from packs.status and its ledger entries from credits.events. Each scan
reads the one partition the key hashes to (the producers' default partitioner), from the
first record of the time window (`offsets_for_times`) to the end, and at most
`max_records` of the newest records: its cost is that partition's traffic in the window,
whatever the pack, so it is an operator's tool, not a reader's API."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.partitioner import murmur2

from shared.admin import partitions_of
from shared.consumer import EventFeed
from shared.errors import InvalidMessage
from shared.events import CreditsChanged, Decoder, ImageStatus, PackStatus, ProviderControl
from shared.kafka import KafkaConfig
from shared.metrics import KafkaGauges
from shared.settings import CommonSettings


class ProviderSwitch(EventFeed[ProviderControl]):
    """The newest pause or resume on generation.control (None: never paused)."""

    name = "generation-control"

    def __init__(self, kafka: KafkaConfig, topic: str) -> None:
        super().__init__(kafka, topic, "packline-api-control", (ProviderControl,))
        self.latest: ProviderControl | None = None

    def apply(self, event: ProviderControl) -> None:
        self.latest = event


def partition_for(key: bytes, partitions: int) -> int:
    """Where the producers' default partitioner (murmur2, as Java's) puts `key`."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


@dataclass
class Scan:
    records: list[ConsumerRecord[bytes, bytes]] = field(default_factory=list)
    scanned: int = 0
    truncated: bool = False  # more than `max_records` in the window: only the newest were read


async def scan_key(kafka: KafkaConfig, topic: str, key: bytes, since_s: float, max_records: int) -> Scan:
    """The records of `key` on `topic` since `since_s` (epoch seconds), oldest first."""
    tps = await partitions_of(kafka, topic)
    tp = TopicPartition(topic, partition_for(key, len(tps)))
    consumer = kafka.consumer(group_id=None, enable_auto_commit=False, client_id="packline-api-ops",
                              max_partition_fetch_bytes=8 << 20)
    await consumer.start()
    try:
        consumer.assign([tp])
        end = (await consumer.end_offsets([tp]))[tp]
        found = (await consumer.offsets_for_times({tp: int(since_s * 1000)})).get(tp)
        first = found.offset if found is not None else end
        scan = Scan(truncated=end - first > max_records)
        first = max(first, end - max_records)
        consumer.seek(tp, first)
        while first < end and await consumer.position(tp) < end:
            for messages in (await consumer.getmany(tp, timeout_ms=500, max_records=5000)).values():
                for m in messages:
                    if m.offset < end:
                        scan.scanned += 1
                        if m.key == key:
                            scan.records.append(m)
        return scan
    finally:
        await consumer.stop()


async def timeline(s: CommonSettings, pack_id: str, window_s: float, max_records: int) -> dict[str, Any] | None:
    """Every status event of the pack (each once, in log order) and its ledger entries; None
    when packs.status has nothing of it in the window."""
    since = time.time() - window_s
    statuses = await scan_key(s.kafka, s.topics.packs_status, pack_id.encode(), since, max_records)
    seen: set[str] = set()
    events: list[dict[str, Any]] = []
    user_id = None
    decode = Decoder[PackStatus | ImageStatus]((PackStatus, ImageStatus))
    for r in statuses.records:
        try:
            ev = decode(r.value)
        except InvalidMessage:
            continue
        if ev.event_id in seen:
            continue  # the same effect published again (a redelivery): shown once
        seen.add(ev.event_id)
        user_id = ev.user_id
        if isinstance(ev, PackStatus):
            events.append({"at": ev.occurred_at.isoformat(), "kind": "pack", "status": ev.status, "cost": ev.cost,
                           "charged": ev.charged, "refunded": ev.refunded, "reason": ev.reason, "offset": r.offset})
        else:
            events.append({"at": ev.occurred_at.isoformat(), "kind": "image", "image_id": ev.image.image_id,
                           "status": ev.image.status, "attempts": ev.image.attempts, "error": ev.image.error,
                           "run": ev.run, "offset": r.offset})
    if user_id is None:
        return None
    money = await scan_key(s.kafka, s.topics.credits_events, user_id.encode(), since, max_records)
    ledger: list[dict[str, Any]] = []
    for ch in (c for c in _decoded(money.records, CreditsChanged) if str(c.pack_id) == pack_id):
        if ch.event_id not in seen:
            seen.add(ch.event_id)
            ledger.append({"at": ch.occurred_at.isoformat(), "reason": ch.reason, "amount": ch.amount,
                           "image_id": ch.image_id, "balance": ch.balance})
    last = next((e["status"] for e in reversed(events) if e["kind"] == "pack"), None)
    return {
        "pack_id": pack_id, "user_id": user_id, "status": last, "events": events, "ledger": ledger,
        "scanned": {"packs_status": statuses.scanned, "credits_events": money.scanned},
        "truncated": statuses.truncated or money.truncated, "window_s": window_s,
    }


def _decoded(records: list[ConsumerRecord[bytes, bytes]], kind: type[CreditsChanged]) -> list[CreditsChanged]:
    decode = Decoder((kind,))
    out = []
    for r in records:
        try:
            out.append(decode(r.value))
        except InvalidMessage:
            continue  # a balance reply, or something unreadable: not a ledger entry
    return out


async def lag(s: CommonSettings) -> dict[str, Any]:
    """Per topic of the deployment: messages kept and written, and each consumer group's lag
    (its committed offsets; a group-less reader, such as the notifier's, has none)."""
    admin = s.kafka.admin(client_id="packline-api-ops")
    await admin.start()
    try:
        names = sorted(str(g[0]) for g in await admin.list_consumer_groups() if str(g[0]).startswith(f"{s.topic_prefix}packline"))
        offsets = await asyncio.gather(*(admin.list_consumer_group_offsets(group) for group in names))
        groups = {group: sorted({tp.topic for tp in committed}) for group, committed in zip(names, offsets, strict=True)}
    finally:
        await admin.close()
    gauges = KafkaGauges(s.kafka, groups, dead_letters=s.topics.all())
    try:
        reading = await gauges.read()
    finally:
        await gauges.stop()
    by_topic: dict[str, dict[str, int]] = {}
    for (group, topic, _partition), behind in reading.lag.items():
        by_topic.setdefault(topic, {})
        by_topic[topic][group] = by_topic[topic].get(group, 0) + behind
    prefix = len(s.topic_prefix)
    return {"topics": [
        {"topic": topic[prefix:], "kept": reading.kept[topic], "written": reading.end.get(topic, 0),
         "lag": by_topic.get(topic, {}), "max_lag": max(by_topic.get(topic, {}).values(), default=0)}
        for topic in sorted(reading.kept)
    ]}
