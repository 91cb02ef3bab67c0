"""What tracing costs. In-process: one consumed record whose handler sends two messages
(`tracing.consumed` + `tracing.inject`, as in shared/worker.py and the Publisher), with
tracing off (the default: no SDK) and on (the SDK, a batching processor, and an exporter
that drops the spans). With `--packs N`, also a short run of the four services on a broker
of its own: N packs, once with tracing off and once exporting to an OTLP/HTTP receiver in
this process, and the CPU seconds the four processes spent on them. A benchmark, not a test.

python -m tests.bench.tracing_bench [--messages 50000] [--packs 30]"""

from __future__ import annotations

import argparse
import asyncio
import os
import threading
import time
import uuid
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from shared import tracing
from shared.consumer import read_from_start
from shared.devbroker import free_port
from shared.events import PackState, PackStatus, decode
from shared.kafka import Outgoing
from tests.bench.common import run_with_broker
from tests.harness import RunningStack


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


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes so far (Linux /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def receiver() -> tuple[ThreadingHTTPServer, list[int]]:
    """An OTLP/HTTP endpoint that accepts every export and counts the bytes."""
    received = [0]

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received[0] += len(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, received


async def pipeline(bootstrap: str, work: Path, packs: int, **env: str) -> tuple[float, float]:
    """(CPU seconds of the four services, wall seconds) for `packs` six-image packs, posted at once."""
    await asyncio.to_thread(work.mkdir, parents=True, exist_ok=True)
    with RunningStack.started(
        bootstrap, work, LOCAL_IMAGE_LATENCY_MS="100", LOCAL_IMAGE_RENDER="placeholder", RATE_LIMIT_PER_S="1000",
        RATE_LIMIT_BURST="1000", **env,
    ) as s:
        user = await s.create_user(credits=6 * (packs + 1))
        pids = [p.pid for p in s.stack.procs.values()]
        async with httpx.AsyncClient(timeout=30) as http:
            await finish(s, http, user, 1)  # warm-up
            cpu, started = cpu_seconds(pids), time.perf_counter()
            await finish(s, http, user, packs)
            wall = time.perf_counter() - started
            await asyncio.sleep(6)  # the batch span processor exports every 5 s: count that too (both runs idle alike)
            return cpu_seconds(pids) - cpu, wall


async def finish(s: RunningStack, http: httpx.AsyncClient, user: str, packs: int) -> None:
    """Post `packs` packs at once and wait for them on packs.status (no HTTP polling: its
    requests would be traced too)."""
    consumer, _ = await read_from_start(s.kafka, s.topics.packs_status, f"bench-{uuid.uuid4().hex[:6]}")
    try:
        body = {"product": {"name": "Bench bottle"}}
        posted = await asyncio.gather(*(http.post(f"{s.api}/v1/packs", json=body, headers=s.auth(user)) for _ in range(packs)))
        pending = {r.json()["pack_id"] for r in posted}
        async for record in consumer:
            event = decode(record.value)
            if isinstance(event, PackStatus) and event.status == PackState.COMPLETED:
                pending.discard(str(event.pack_id))
                if not pending:
                    return
    finally:
        await consumer.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--packs", type=int, default=0)
    args = parser.parse_args()
    if args.packs:
        async def both(bootstrap: str, work: Path) -> None:
            server, received = receiver()
            try:
                off = await pipeline(bootstrap, work / "off", args.packs)
                endpoint = f"http://127.0.0.1:{server.server_port}"
                on = await pipeline(bootstrap, work / "on", args.packs, OTEL_EXPORTER_OTLP_ENDPOINT=endpoint)
            finally:
                server.shutdown()
            print(f"{args.packs} six-image packs, CPU of the four services: off {off[0]:.2f} s, on {on[0]:.2f} s "
                  f"(+{(on[0] / off[0] - 1) * 100:.0f} %); wall: off {off[1]:.1f} s, on {on[1]:.1f} s; "
                  f"{received[0] / 1024:.0f} KiB of OTLP exported")

        run_with_broker(both)
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
