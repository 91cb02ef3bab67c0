"""Trace context in Kafka headers (shared/tracing.py), against an in-memory SDK provider:
what the Publisher writes, what a consumer continues, and that nothing happens while off."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from shared import tracing
from shared.events import PackState, PackStatus
from shared.kafka import Outgoing, header

TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = f"00-{TRACE}-b7ad6b7169203331-01"


@dataclass
class FakeRecord:  # the attributes of an aiokafka ConsumerRecord that tracing reads
    topic: str
    partition: int = 0
    offset: int = 0
    headers: list[tuple[str, bytes]] = field(default_factory=list)


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """Tracing on, with a provider of its own (the global one is left alone)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(tracing, "_enabled", True)
    monkeypatch.setattr(tracing, "tracer", lambda: provider.get_tracer("test"))
    yield exporter
    provider.shutdown()


def status(pack_id: uuid.UUID) -> Outgoing:
    return Outgoing.of("packs.status", PackStatus(pack_id=pack_id, user_id="u1", status=PackState.DRAFT), pack_id)


def trace_of(headers: list[tuple[str, bytes]]) -> str:
    value = header(headers, "traceparent")
    assert value is not None
    return value.split("-")[1]


@pytest.mark.parametrize(("env", "wanted"), [
    ({}, None),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, "otlp"),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, "otlp"),
    ({"OTEL_TRACES_EXPORTER": "console"}, "console"),
    ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, None),
    ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, None),
    ({"OTEL_TRACES_EXPORTER": "zipkin"}, None),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": ""}, None),
])
def test_tracing_is_off_unless_the_standard_variables_ask_for_an_exporter(env: dict[str, str], wanted: str | None) -> None:
    assert tracing.exporter_wanted(env) == wanted
    if wanted is None:
        assert tracing.configure("api", env) is False


def test_while_off_messages_are_sent_untouched() -> None:
    assert not tracing.enabled()
    message = status(uuid.uuid4())
    tracing.inject(message.topic, message.value, message.headers)
    assert message.headers == []
    with tracing.consumed(FakeRecord("packs.status", headers=[("traceparent", PARENT.encode())])):
        tracing.inject(message.topic, message.value, message.headers)
    assert message.headers == []


def test_a_consumed_message_s_effects_continue_its_trace(spans: InMemorySpanExporter) -> None:
    record = FakeRecord("images.jobs", 2, 41, [("x-attempts", b"1"), ("traceparent", PARENT.encode())])
    out = status(uuid.uuid4())
    with tracing.consumed(record):
        tracing.inject(out.topic, out.value, out.headers)
    assert trace_of(out.headers) == TRACE and header(out.headers, "x-attempts") is None
    by_name = {s.name: s for s in spans.get_finished_spans()}
    consumer, producer = by_name["process images.jobs"], by_name["send packs.status"]
    assert consumer.kind == SpanKind.CONSUMER and producer.kind == SpanKind.PRODUCER
    assert consumer.parent is not None and consumer.parent.span_id == int("b7ad6b7169203331", 16)
    assert producer.parent is not None and producer.parent.span_id == consumer.context.span_id
    assert consumer.attributes is not None and consumer.attributes["messaging.kafka.offset"] == 41
    # The header names the producer span: the next consumer is its child.
    assert header(out.headers, "traceparent") == f"00-{TRACE}-{producer.context.span_id:016x}-01"


def test_a_forwarded_message_keeps_the_trace_it_carries(spans: InMemorySpanExporter) -> None:
    headers = [("x-due-at", b"0"), ("traceparent", PARENT.encode())]
    with tracing.consumed(FakeRecord("images.retry.1", headers=list(headers))):
        tracing.inject("images.jobs", b"{}", headers)
    assert [h for h in headers if h[0] == "traceparent"] == [("traceparent", PARENT.encode())]


def test_a_dead_letter_keeps_the_trace_of_the_message_it_holds() -> None:
    dead = [("x-error", b"bad")]
    assert tracing.keep(dead, [("traceparent", PARENT.encode()), ("tracestate", b"k=v"), ("x-other", b"1")]) == [
        ("x-error", b"bad"), ("traceparent", PARENT.encode()), ("tracestate", b"k=v")]
    assert tracing.keep(dead, [("traceparent", b"00-other")]) == dead  # one it has already wins


def test_a_batch_of_packs_sends_each_pack_s_messages_in_its_own_trace(spans: InMemorySpanExporter) -> None:
    first, second = uuid.uuid4(), uuid.uuid4()
    other_trace = "1" * 32
    records = [
        (str(first), FakeRecord("packs.requested", 0, 1, [("traceparent", PARENT.encode())])),
        (str(second), FakeRecord("packs.requested", 0, 2, [("traceparent", f"00-{other_trace}-{'2' * 16}-01".encode())])),
    ]
    records.append((str(first), FakeRecord("packs.requested", 0, 3, [("traceparent", PARENT.encode())])))
    a, b = status(first), status(second)
    with tracing.per_pack(records):
        with tracing.span("ledger transaction", {"code.function.name": "on_packs_requested"}):
            pass
        for m in (b, a):
            tracing.inject(m.topic, m.value, m.headers)
    assert trace_of(a.headers) == TRACE and trace_of(b.headers) == other_trace
    ledger = [s for s in spans.get_finished_spans() if s.name == "ledger transaction"]
    assert sorted(f"{s.context.trace_id:032x}" for s in ledger) == sorted([TRACE, other_trace])
    consumed = [s for s in spans.get_finished_spans() if s.name == "process packs.requested"]
    assert sorted(s.attributes["messaging.kafka.offset"] for s in consumed if s.attributes) == [1, 2, 3]  # every record's span ends


def test_a_record_handled_on_its_own_inside_a_batch_stays_in_its_own_trace(spans: InMemorySpanExporter) -> None:
    first, second = uuid.uuid4(), uuid.uuid4()
    other = f"00-{'1' * 32}-{'2' * 16}-01"
    records = [(str(first), FakeRecord("packs.requested", 0, 1, [("traceparent", PARENT.encode())])),
               (str(second), FakeRecord("packs.requested", 0, 2, [("traceparent", other.encode())]))]
    b = status(second)
    with tracing.per_pack(records), tracing.consumed(records[0][1]):
        with tracing.span("ledger transaction"):
            pass
        tracing.inject(b.topic, b.value, b.headers)
    assert trace_of(b.headers) == TRACE  # the record being handled, not the pack the message names
    assert len([s for s in spans.get_finished_spans() if s.name == "ledger transaction"]) == 1
