"""`make bench-pipeline`: what the pipeline adds to a pack beyond the image model's own
time, and how many images per second it carries. A benchmark, not a test; loopback only;
bounded.

latency:    packs one after another; for each, POST /v1/packs -> COMPLETED on packs.status,
            minus the slowest of its six images' own backend time (GENERATING -> COMPLETED).
throughput: packs published at once straight to Kafka; images COMPLETED per second.

python -m tests.bench.pipeline_bench [--packs 40] [--latency-ms 300] [--jitter-ms 0] [--burst-packs 300]"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import httpx

from shared.client import request_pack
from shared.consumer import read_from_start
from shared.events import ImageStatus, PackStatus, Product, decode
from shared.kafka import Publisher
from tests.bench.common import run_with_broker
from tests.harness import RunningStack


class Seen:
    def __init__(self) -> None:
        self.packs: dict[str, dict[str, float]] = defaultdict(dict)
        self.images: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
        self.completed_images: list[float] = []

    async def follow(self, s: RunningStack) -> None:
        consumer, _ = await read_from_start(s.kafka, s.topics.packs_status, "pipeline-bench")
        try:
            async for record in consumer:
                now = time.perf_counter()
                ev = decode(record.value)
                if isinstance(ev, PackStatus):
                    self.packs[str(ev.pack_id)].setdefault(ev.status, now)
                elif isinstance(ev, ImageStatus):
                    marks = self.images[(str(ev.pack_id), ev.image.image_id)]
                    if ev.image.status not in marks and ev.image.status == "COMPLETED":
                        self.completed_images.append(now)
                    marks.setdefault(ev.image.status, now)
        finally:
            await consumer.stop()

    async def until(self, pack_ids: list[str], timeout: float = 300) -> None:
        deadline = time.perf_counter() + timeout
        while not all("COMPLETED" in self.packs.get(p, {}) for p in pack_ids):
            if time.perf_counter() > deadline:
                raise TimeoutError("packs did not complete")
            await asyncio.sleep(0.001)


async def bench(args: argparse.Namespace, bootstrap: str, work: Path) -> None:
    with RunningStack.started(
        bootstrap, work, LOCAL_IMAGE_LATENCY_MS=str(args.latency_ms), LOCAL_IMAGE_JITTER_MS=str(args.jitter_ms),
        TOPIC_PARTITIONS="6",
        GENERATION_CONCURRENCY="256", RATE_LIMIT_PER_S="1000", RATE_LIMIT_BURST="1000",
        LOCAL_IMAGE_RENDER="placeholder",
    ) as s:
        async with httpx.AsyncClient(timeout=30) as http:
            await measure(args, s, http)


async def measure(args: argparse.Namespace, s: RunningStack, http: httpx.AsyncClient) -> None:
    seen = Seen()
    follower = asyncio.create_task(seen.follow(s))
    try:
        user = await s.create_user(credits=6 * (args.packs + args.burst_packs + 1))
        body = {"product": {"name": "Bench bottle", "description": "750 ml", "features": ["cold 24 h"]}}

        async def post() -> str:
            response = await http.post(f"{s.api}/v1/packs", json=body, headers=s.auth(user))
            return str(response.json()["pack_id"])

        await seen.until([await post()])  # warm-up: connections, first fetches
        overheads = []
        parts: dict[str, list[float]] = defaultdict(list)
        for _ in range(args.packs):
            t0 = time.perf_counter()
            pack_id = await post()
            parts["POST -> 202"].append(time.perf_counter() - t0)
            await seen.until([pack_id])
            model = max(m["COMPLETED"] - m["GENERATING"] for (p, _), m in seen.images.items() if p == pack_id)
            overheads.append((seen.packs[pack_id]["COMPLETED"] - t0 - model) * 1000)
            marks = seen.packs[pack_id]
            images = [m for (p, _), m in seen.images.items() if p == pack_id]
            parts["POST -> PROCESSING"].append(marks["PROCESSING"] - t0)
            parts["PROCESSING -> first GENERATING"].append(min(m["GENERATING"] for m in images) - marks["PROCESSING"])
            parts["last image COMPLETED -> pack COMPLETED"].append(marks["COMPLETED"] - max(m["COMPLETED"] for m in images))
        overheads.sort()
        q = statistics.quantiles(overheads, n=100)
        print(f"pipeline overhead per pack ({args.packs} packs, images {args.latency_ms} ± {args.jitter_ms} ms): "
              f"p50 {q[49]:.1f} ms, p90 {q[89]:.1f} ms, max {overheads[-1]:.1f} ms")
        for name, values in parts.items():
            print(f"  {name}: p50 {statistics.median(values) * 1000:.1f} ms")

        if not args.burst_packs:
            return
        publisher = Publisher(s.kafka, "pipeline-bench")
        await publisher.start()
        before = len(seen.completed_images)
        t0 = time.perf_counter()
        burst = await asyncio.gather(*(
            request_pack(publisher, user, Product(name=f"Burst {i}"), topics=s.topics) for i in range(args.burst_packs)
        ))
        await publisher.stop()
        await seen.until(list(burst), timeout=600)
        took = time.perf_counter() - t0
        images = len(seen.completed_images) - before
        print(f"throughput: {args.burst_packs} packs ({images} images) published at once, all COMPLETED in "
              f"{took:.1f} s: {images / took:.0f} images/s end to end (one process per service)")
    finally:
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--packs", type=int, default=40)
    parser.add_argument("--latency-ms", type=int, default=300)
    parser.add_argument("--jitter-ms", type=int, default=0, help="each image takes latency ± jitter")
    parser.add_argument("--burst-packs", type=int, default=300)
    args = parser.parse_args()
    return run_with_broker(lambda bootstrap, work: bench(args, bootstrap, work))


if __name__ == "__main__":
    sys.exit(main())
