"""One trace per pack, across the four processes: W3C trace context (`traceparent`,
`tracestate`) in the HTTP request and in every Kafka message's headers, and OpenTelemetry
spans around what each service does with it.

Off unless the standard variables ask for an exporter (`OTEL_TRACES_EXPORTER=otlp|console`,
or an `OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`; `OTEL_SDK_DISABLED=true` or
`OTEL_TRACES_EXPORTER=none` keep it off). While off, no SDK is installed and every helper
here returns before touching the OpenTelemetry API: the message path pays one boolean test.

Headers are written in one place, `shared.kafka.Publisher`: a message that already carries
a `traceparent` (a retried job forwarded from its tier, a dead letter) keeps it; any other
gets a producer span, child of the current span, and that span's context.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagators.textmap import Getter, Setter
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

log = logging.getLogger("packline.tracing")
Headers = list[tuple[str, bytes]]
TRACE_HEADERS = ("traceparent", "tracestate")
PROPAGATOR = TraceContextTextMapPropagator()
_enabled = False
_OFF: contextlib.nullcontext[None] = contextlib.nullcontext()  # reusable, and free to enter
# While a batch of several packs is handled at once (credits' intake): each pack's span
# context, so that each pack's messages stay in that pack's trace.
_per_pack: contextvars.ContextVar[Mapping[str, otel_context.Context] | None] = contextvars.ContextVar(
    "packline_per_pack", default=None,
)


def enabled() -> bool:
    return _enabled


def exporter_wanted(env: Mapping[str, str] = os.environ) -> str | None:
    """`otlp`, `console`, or None (off), from the standard OpenTelemetry variables."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    chosen = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if chosen in ("otlp", "console"):
        return chosen
    if chosen and chosen != "none":
        log.warning("OTEL_TRACES_EXPORTER=%s is not supported (otlp, console or none): tracing stays off", chosen)
        return None
    if not chosen and (env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")):
        return "otlp"
    return None


def configure(service: str, env: Mapping[str, str] = os.environ) -> bool:
    """Install the SDK with a batching exporter when the variables ask for one; True if so.
    The exporter reads its own variables (endpoint, headers, timeout, compression), the
    batch processor `OTEL_BSP_*`, the resource `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES`."""
    kind = exporter_wanted(env)
    if kind is None:
        return False
    # Imported only here: with tracing off, the SDK and the exporter are never loaded.
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    exporter: SpanExporter
    if kind == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    else:
        exporter = ConsoleSpanExporter()
    resource = Resource.create({SERVICE_NAME: env.get("OTEL_SERVICE_NAME") or f"packline-{service}"})
    provider = TracerProvider(resource=resource)  # flushes its spans at exit
    provider.add_span_processor(BatchSpanProcessor(exporter))
    install(provider)
    log.info("tracing on: %s exporter, service %s", kind, resource.attributes.get(SERVICE_NAME))
    return True


def install(provider: trace.TracerProvider) -> None:
    """Make `provider` the process's tracer provider and turn the helpers on."""
    global _enabled
    trace.set_tracer_provider(provider)
    _enabled = True


def tracer() -> trace.Tracer:
    return _TRACER


# A proxy until `install`, then the SDK's tracer: looked up once, not per span.
_TRACER = trace.get_tracer("packline")


class _HeaderList(Getter[Sequence[tuple[str, bytes]]], Setter[Headers]):
    """Kafka headers (a list of (name, bytes) pairs) as a propagation carrier."""

    def get(self, carrier: Sequence[tuple[str, bytes]], key: str) -> list[str] | None:
        found = [v.decode(errors="replace") for k, v in carrier or () if k == key]
        return found or None

    def keys(self, carrier: Sequence[tuple[str, bytes]]) -> list[str]:
        return [k for k, _ in carrier or ()]

    def set(self, carrier: Headers, key: str, value: str) -> None:
        carrier[:] = [(k, v) for k, v in carrier if k != key]
        carrier.append((key, value.encode()))


HEADERS = _HeaderList()


def keep(into: Headers, source: Sequence[tuple[str, bytes]] | None) -> Headers:
    """`into` with the trace headers of `source` it lacks: a dead letter stays in the trace
    of the message it holds (cheap, so done whether tracing is on or not)."""
    present = {k for k, _ in into}
    into.extend((k, v) for k, v in source or () if k in TRACE_HEADERS and k not in present)
    return into


def remote(headers: Sequence[tuple[str, bytes]] | None) -> otel_context.Context:
    return PROPAGATOR.extract(headers or [], getter=HEADERS)


def _attributes(topic: str, partition: int | None = None, offset: int | None = None) -> dict[str, Any]:
    attributes: dict[str, Any] = {"messaging.system": "kafka", "messaging.destination.name": topic}
    if partition is not None:
        attributes["messaging.destination.partition.id"] = str(partition)
    if offset is not None:
        attributes["messaging.kafka.offset"] = offset
    return attributes


def inject(topic: str, value: bytes, headers: Headers) -> None:
    """Called by the Publisher for each message: a producer span and its context in `headers`
    (unless they carry a trace already)."""
    if not _enabled or any(k == "traceparent" for k, _ in headers):
        return
    parent = _pack_context(value)
    span = tracer().start_span(f"send {topic}", context=parent, kind=SpanKind.PRODUCER, attributes=_attributes(topic))
    try:
        PROPAGATOR.inject(headers, context=trace.set_span_in_context(span), setter=HEADERS)
    finally:
        span.end()


def _pack_context(value: bytes) -> otel_context.Context | None:
    per_pack = _per_pack.get()
    if not per_pack:
        return None
    try:
        pack_id = json.loads(value).get("pack_id")
    except (ValueError, AttributeError):
        return None
    return per_pack.get(str(pack_id)) if pack_id is not None else None


def consumed(record: Any) -> contextlib.AbstractContextManager[None]:
    """A consumer span for one Kafka record (an aiokafka ConsumerRecord), child of the span
    that produced it, current while the record is handled."""
    return _consumed(record) if _enabled else _OFF


@contextlib.contextmanager
def _consumed(record: Any) -> Iterator[None]:
    token = _per_pack.set(None)  # one record handled on its own (intake's one-by-one fallback): its trace only
    try:
        with tracer().start_as_current_span(
            f"process {record.topic}", context=remote(record.headers), kind=SpanKind.CONSUMER,
            attributes=_attributes(record.topic, record.partition, record.offset),
        ):
            yield
    finally:
        _per_pack.reset(token)


def span(
    name: str, attributes: Mapping[str, Any] | None = None, kind: SpanKind = SpanKind.INTERNAL,
) -> contextlib.AbstractContextManager[None]:
    """An internal (or client) span under the current one; in a per-pack batch, one per pack."""
    return _span(name, attributes, kind) if _enabled else _OFF


@contextlib.contextmanager
def _span(name: str, attributes: Mapping[str, Any] | None, kind: SpanKind) -> Iterator[None]:
    per_pack = _per_pack.get()
    if not per_pack:
        with tracer().start_as_current_span(name, kind=kind, attributes=attributes):
            yield
        return
    batch = {**(attributes or {}), "packline.batch_size": len(per_pack)}
    spans = [tracer().start_span(name, context=ctx, kind=kind, attributes=batch)
             for ctx in per_pack.values()]
    try:
        yield
    finally:
        for one in spans:
            one.end()


def per_pack(records: Sequence[tuple[str, Any]]) -> contextlib.AbstractContextManager[None]:
    """Several packs handled together (pack_id, record): a consumer span per pack, and the
    messages sent meanwhile go to the trace of the pack they name."""
    return _per_pack_spans(records) if _enabled else _OFF


@contextlib.contextmanager
def _per_pack_spans(records: Sequence[tuple[str, Any]]) -> Iterator[None]:
    # One span per record; a pack with several records in the batch sends in its last one's.
    started = [(pack_id, tracer().start_span(
        f"process {record.topic}", context=remote(record.headers), kind=SpanKind.CONSUMER,
        attributes=_attributes(record.topic, record.partition, record.offset),
    )) for pack_id, record in records]
    token = _per_pack.set({pack_id: trace.set_span_in_context(s) for pack_id, s in started})
    try:
        yield
    finally:
        _per_pack.reset(token)
        for _, one in started:
            one.end()
