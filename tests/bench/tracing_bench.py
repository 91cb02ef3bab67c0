"""What tracing costs on the message path: one consumed record whose handler sends two
messages (`tracing.consumed` + `tracing.inject`, as in shared/worker.py and the Publisher),
with tracing off (the default: no SDK) and on (the SDK, a batching processor, and an
exporter that drops the spans, so the figure is packline's side, not the network's).
A benchmark, not a test; in-process; a few seconds.

python -m tests.bench.tracing_bench [--messages 50000]"""

from __future__ import annotations

import argparse
import time
import uuid
from collections.abc import Sequence

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from shared import tracing
from shared.events import PackState, PackStatus
from shared.kafka import Outgoing


class Drop(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


class Record:
    def __init__(self, headers: list[tuple[str, bytes]]) -> None:
        self.topic, self.partition, self.offset, self.headers = "images.results", 0, 0, headers


def run(n: int) -> float:
    """Microseconds per consumed record (two messages sent each)."""
    parent = [("traceparent", f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01".encode())]
    event = PackStatus(pack_id=uuid.uuid4(), user_id="u1", status=PackState.PROCESSING)
    value = event.encode()
    started = time.perf_counter()
    for _ in range(n):
        with tracing.consumed(Record(parent)):
            for _ in range(2):
                out = Outgoing("packs.status", value, b"k", [])
                tracing.inject(out.topic, out.value, out.headers)
    return (time.perf_counter() - started) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=50_000)
    args = parser.parse_args()
    run(1000)
    off = min(run(args.messages) for _ in range(3))
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Drop()))
    tracing.install(provider)  # what configure() does, with an exporter that sends nothing
    run(1000)
    on = min(run(args.messages) for _ in range(3))
    provider.shutdown()
    print(f"per consumed record with two sends: off {off:.2f} µs, on {on:.2f} µs (+{on - off:.2f} µs; 3 spans per record)")


if __name__ == "__main__":
    main()
