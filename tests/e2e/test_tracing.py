"""One pack, one trace: the four services export their spans over OTLP/HTTP to a receiver
in this test (the real protocol: protobuf POSTs on /v1/traces), and every Kafka message of
the pack carries the trace, through a retry tier and into the dead-letter topic. The same
stack's /metrics show the lag, depth and duration metrics the dashboards use."""

from __future__ import annotations

import asyncio
import gzip
import secrets
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest, ExportTraceServiceResponse

from shared.devbroker import free_port
from shared.kafka import header
from tests.harness import RunningStack

pytestmark = pytest.mark.e2e
SERVICES = {"packline-api", "packline-credits", "packline-generation", "packline-notifier"}


@dataclass(frozen=True)
class Span:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    kind: int
    attributes: dict[str, Any]


@dataclass
class Receiver:
    """An OTLP/HTTP trace receiver: what the services exported, decoded."""

    port: int
    spans: list[Span] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, body: bytes) -> None:
        request = ExportTraceServiceRequest.FromString(body)
        got = []
        for resource_spans in request.resource_spans:
            attrs = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for s in scope_spans.spans:
                    got.append(Span(
                        attrs.get("service.name", ""), s.name, s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex(), s.kind,
                        {a.key: _value(a.value) for a in s.attributes},
                    ))
        with self.lock:
            self.spans.extend(got)

    def trace(self, trace_id: str) -> list[Span]:
        with self.lock:
            return [s for s in self.spans if s.trace_id == trace_id]


def _value(v: Any) -> Any:
    return getattr(v, v.WhichOneof("value")) if v.WhichOneof("value") else None


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    port = free_port()
    received = Receiver(port)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            if self.path != "/v1/traces":
                self.send_error(404)
                return
            received.take(body)
            reply = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield received
    finally:
        server.shutdown()
        server.server_close()


def unlinked(spans: list[Span], root_parent: str) -> list[Span]:
    """Spans whose parent is neither the client's span nor a span received."""
    known = {s.span_id for s in spans} | {root_parent}
    return [s for s in spans if s.parent_id not in known]


async def test_one_pack_is_one_trace_across_the_four_processes(kafka_bootstrap: str, tmp_path: Path, receiver: Receiver) -> None:
    # The main image fails once (a retry tier), the detail image for good (images.dlq).
    with RunningStack.started(
        kafka_bootstrap, tmp_path, OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{receiver.port}",
        OTEL_BSP_SCHEDULE_DELAY="100", LOCAL_IMAGE_FAIL_FIRST="1", LOCAL_IMAGE_PERMANENT_FAIL_KINDS="detail",
        METRICS_EVERY_S="0.5", METRICS_HOST="0.0.0.0",
    ) as s:
        user = await s.create_user(credits=10)
        trace_id, client_span = secrets.token_hex(16), secrets.token_hex(8)
        response = await s.post_pack(user, {"product": {"name": "Lamp"}, "images": ["main", "detail"]},
                                     traceparent=f"00-{trace_id}-{client_span}-01")
        assert response.status_code == 202, response.text
        pack_id = response.json()["pack_id"]
        events = await s.events(pack_id, user)
        assert events[-1].json()["status"] == "PARTIAL"

        # Spans arrive in batches (OTEL_BSP_SCHEDULE_DELAY) as each process ends them.
        spans: list[Span] = []
        for _ in range(150):
            spans = receiver.trace(trace_id)
            settled = [x for x in spans if x.service == "packline-notifier" and x.name.endswith("packs.status")]
            if {x.service for x in spans} == SERVICES and len(settled) >= 6 and not unlinked(spans, client_span):
                break
            await asyncio.sleep(0.2)
        assert {x.service for x in spans} == SERVICES
        assert unlinked(spans, client_span) == []

        by_name: dict[tuple[str, str], list[Span]] = {}
        for x in spans:
            by_name.setdefault((x.service, x.name), []).append(x)
        # The api's server span (FastAPI's own) continues the client's trace.
        [post] = by_name[("packline-api", "POST /v1/packs")]
        assert post.parent_id == client_span and post.kind == 2 and post.attributes["http.response.status_code"] == 202
        ledger = by_name[("packline-credits", "ledger transaction")]
        functions = {x.attributes["code.function.name"] for x in ledger}
        # The intake's batch, and the results (one at a time or in a batch): the settlement among them.
        assert "on_packs_requested" in functions and any(f.startswith("on_image_result") for f in functions), functions
        calls = by_name[("packline-generation", "image provider call")]
        # main: failed once, then made after a retry tier; detail: refused for good at once.
        assert sorted((x.attributes["packline.image_id"], x.attributes["packline.attempt"]) for x in calls) == [
            ("detail", 1), ("main", 1), ("main", 2)]
        assert ("packline-notifier", f"process {s.topics.packs_status}") in by_name

        # The trace rides every message of the pack: tiers and dead letters included.
        mine = {
            topic: [r for r in await s.records(topic) if pack_id.encode() in (r.value or b"")]
            for topic in (s.topics.packs_requested, s.topics.packs_accepted, s.topics.images_jobs, s.topics.images_results,
                          s.topics.packs_status, s.topics.images_dlq, *s.topics.retry_topics)
        }
        retried = [r for t in s.topics.retry_topics for r in mine[t]]
        assert len(retried) == 1 and len(mine[s.topics.images_dlq]) == 1
        for topic, records in mine.items():
            for r in records:
                parent = header(r.headers, "traceparent")
                assert parent is not None and parent.split("-")[1] == trace_id, (topic, r.offset, r.headers)

        # The metrics the dashboards are built on, as scraped.
        dead = await wait_metric(s, "generation", "packline_dead_letters_messages", f'topic="{s.topics.images_dlq}"', 1.0)
        assert dead == 1.0
        lag = await s.metric("credits", "packline_consumer_lag_messages")
        assert any(f'topic="{s.topics.packs_requested}"' in labels for labels, _ in lag)
        buckets = await s.metric("generation", "packline_provider_call_duration_seconds_bucket")
        assert any('le="180.0"' in labels and 'outcome="ok"' in labels and v >= 1 for labels, v in buckets)
        assert sum(v for labels, v in await s.metric("generation", "packline_provider_calls_total")
                   if 'outcome="transient"' in labels) >= 1
        durations = await s.metric("notifier", "packline_pack_duration_seconds_count")
        assert any('status="PARTIAL"' in labels and v >= 1 for labels, v in durations)
        http = await s.metric("api", "packline_http_request_duration_seconds_count")
        assert any('route="/v1/packs"' in labels and 'status="202"' in labels for labels, _ in http)
        # METRICS_HOST=0.0.0.0: a worker's /metrics answers on this host's other addresses too.
        address = outward_address()
        async with httpx.AsyncClient(timeout=10) as client:
            reply = await client.get(f"http://{address}:{s.stack.port('generation')}/metrics")
        assert reply.status_code == 200 and "packline_consumer_lag_messages" in reply.text


def outward_address() -> str:
    """This host's address on its default route (no packet is sent): not a loopback one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("203.0.113.1", 9))  # a documentation address: only the route is looked up
        address = str(probe.getsockname()[0])
    assert not address.startswith("127."), f"no non-loopback address to check METRICS_HOST with: {address}"
    return address


async def wait_metric(s: RunningStack, instance: str, name: str, label: str, want: float, timeout: float = 30) -> float | None:
    value = None
    for _ in range(int(timeout / 0.25)):
        value = next((v for labels, v in await s.metric(instance, name) if label in labels), None)
        if value == want:
            break
        await asyncio.sleep(0.25)
    return value
