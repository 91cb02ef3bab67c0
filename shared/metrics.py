"""Metrics more than one service exports (Prometheus conventions: base units, `_seconds`,
`_total`): HTTP request duration (the api and the notifier), and, read every
METRICS_EVERY_S by each worker, consumer lag per group and partition, image jobs waiting
in the retry tiers and dead letters kept.

Lag is the broker's view (end offset minus the group's committed offset), so it covers
every member of a group, running or not; each instance reports it, and dashboards take
the max over instances."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client import Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.kafka import KafkaConfig

log = logging.getLogger("packline.metrics")

HTTP_SECONDS = Histogram(
    "packline_http_request_duration_seconds", "HTTP request duration (to the end of the body; SSE streams included)",
    ["service", "method", "route", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0),
)
CONSUMER_LAG = Gauge(
    "packline_consumer_lag_messages", "messages after a group's committed offset, per partition", ["group", "topic", "partition"],
)
RETRY_DEPTH = Gauge("packline_retry_depth_messages", "image jobs waiting in a retry tier, not yet moved back", ["topic"])
DEAD_LETTERS = Gauge("packline_dead_letters_messages", "messages kept on a dead-letter topic", ["topic"])
LAG_SCRAPE_ERRORS = Gauge("packline_lag_scrape_failed", "1 while the last lag and depth reading failed")


class ObserveHttp:
    """ASGI middleware: the request duration histogram, labelled by the route's template
    (not the raw path). The server span is FastAPI's own: it starts one per request,
    continuing the caller's `traceparent`, whenever a tracer provider is installed."""

    def __init__(self, app: ASGIApp, service: str) -> None:
        self.app, self.service = app, service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client sees if the app raises before answering

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            observe_http(self.service, scope.get("method", "GET"), route, status, time.perf_counter() - started)


def observe_http(service: str, method: str, route: str, status: int, seconds: float) -> None:
    HTTP_SECONDS.labels(service, method, route, str(status)).observe(seconds)


@dataclass
class KafkaReading:
    """One reading of offsets: lag per (group, topic, partition), and per topic the messages
    kept (end minus beginning offsets) and written (the sum of its end offsets)."""

    lag: dict[tuple[str, str, int], int] = field(default_factory=dict)
    kept: dict[str, int] = field(default_factory=dict)
    end: dict[str, int] = field(default_factory=dict)


class KafkaGauges:
    """Reads offsets for the gauges above: `groups` maps each consumer group to the topics
    it reads; the retry group's lag is the retry tiers' depth; a dead-letter topic's depth
    is everything it keeps (end minus beginning offsets)."""

    def __init__(
        self, kafka: KafkaConfig, groups: Mapping[str, Sequence[str]], dead_letters: Sequence[str] = (),
        retry_group: str | None = None,
    ) -> None:
        self.kafka, self.groups, self.dead_letters, self.retry_group = kafka, groups, list(dead_letters), retry_group
        self._admin: AIOKafkaAdminClient | None = None
        self._offsets: AIOKafkaConsumer | None = None

    async def report(self) -> None:
        try:
            await self._report()
        except BaseException:
            LAG_SCRAPE_ERRORS.set(1)
            raise
        LAG_SCRAPE_ERRORS.set(0)

    async def _report(self) -> None:
        reading = await self.read()
        retry: dict[str, int] = defaultdict(int)
        for (group, topic, partition), lag in reading.lag.items():
            CONSUMER_LAG.labels(group, topic, str(partition)).set(lag)
            if group == self.retry_group:
                retry[topic] += lag
        for topic, waiting in retry.items():
            RETRY_DEPTH.labels(topic).set(waiting)
        for topic in self.dead_letters:
            DEAD_LETTERS.labels(topic).set(reading.kept.get(topic, 0))

    async def read(self) -> KafkaReading:
        """The figures behind the gauges, without setting them (the api's ops console shows them)."""
        admin, offsets = await self._clients()
        topics = sorted({t for ts in self.groups.values() for t in ts} | set(self.dead_letters))
        tps = [
            TopicPartition(d["topic"], p["partition"])
            for d in await admin.describe_topics(topics) if d["error_code"] == 0 for p in d["partitions"]
        ]
        ends: dict[TopicPartition, int] = await offsets.end_offsets(tps)
        begins: dict[TopicPartition, int] = await offsets.beginning_offsets(tps)
        reading = KafkaReading()
        groups = list(self.groups.items())
        offsets = await asyncio.gather(*(admin.list_consumer_group_offsets(group) for group, _ in groups))
        for (group, read), committed in zip(groups, offsets, strict=True):
            for tp in (tp for tp in tps if tp.topic in read):
                at = committed.get(tp)
                # Never committed: the group starts from the beginning (auto_offset_reset=earliest).
                position = at.offset if at is not None and at.offset >= 0 else begins[tp]
                reading.lag[(group, tp.topic, tp.partition)] = max(0, ends[tp] - max(position, begins[tp]))
        for tp in tps:
            reading.kept[tp.topic] = reading.kept.get(tp.topic, 0) + ends[tp] - begins[tp]
            reading.end[tp.topic] = reading.end.get(tp.topic, 0) + ends[tp]
        return reading

    async def _clients(self) -> tuple[AIOKafkaAdminClient, AIOKafkaConsumer]:
        if self._admin is None or self._offsets is None:
            admin = self.kafka.admin(client_id="packline-metrics")
            offsets = self.kafka.consumer(group_id=None, enable_auto_commit=False, client_id="packline-metrics")
            await admin.start()
            try:
                await offsets.start()
            except BaseException:
                await admin.close()
                raise
            self._admin, self._offsets = admin, offsets
        return self._admin, self._offsets

    async def stop(self) -> None:
        if self._offsets is not None:
            await self._offsets.stop()
        if self._admin is not None:
            await self._admin.close()
        self._admin = self._offsets = None
