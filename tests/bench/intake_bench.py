"""`make bench-intake`: another service floods packs.requested with pack requests of many
users, then a seller POSTs one pack. Prints how long the seller waits to see the pack
(POST -> snapshot answers) and to see it start (POST -> PROCESSING), next to the flood's
own drain rate. The flood's packs have one image each, so the figures are about intake.

python -m tests.bench.intake_bench [--requests 20000] [--users 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from services.cli import sse
from shared.consumer import read_from_start
from shared.events import PackRequested, PackState, PackStatus, Product
from shared.kafka import Outgoing, Publisher
from tests.bench.common import run_with_broker
from tests.harness import RunningStack

FAST = {
    "LOCAL_IMAGE_LATENCY_MS": "0", "LOCAL_IMAGE_RENDER": "placeholder", "GENERATION_CONCURRENCY": "256",
    "TOPIC_PARTITIONS": "6", "RATE_LIMIT_PER_S": "1000", "RATE_LIMIT_BURST": "1000",
}


@dataclass
class Terminals:
    """Follows packs.status: when each pack reached a terminal status (and PROCESSING), by
    the records' own timestamps (epoch seconds), so a lagging reader measures right."""

    at: dict[str, float] = field(default_factory=dict)
    statuses: dict[str, str] = field(default_factory=dict)
    processing: dict[str, float] = field(default_factory=dict)

    async def follow(self, s: RunningStack) -> None:
        consumer, _ = await read_from_start(s.kafka, s.topics.packs_status, "intake-bench")
        try:
            while True:
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    for record in records:
                        ev = json.loads(record.value or b"{}")  # not the models: this reader must not lag
                        if ev.get("type") != PackStatus.TYPE:
                            continue
                        if ev["status"] == PackState.PROCESSING:
                            self.processing.setdefault(ev["pack_id"], record.timestamp / 1000)
                        elif PackState(ev["status"]).terminal:
                            self.at.setdefault(ev["pack_id"], record.timestamp / 1000)
                            self.statuses[ev["pack_id"]] = ev["status"]
        finally:
            await consumer.stop()

    async def until_processing(self, pack_id: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while pack_id not in self.processing:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{pack_id} never reached PROCESSING")
            await asyncio.sleep(0.05)

    async def until(self, pack_ids: set[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not pack_ids <= self.at.keys():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(pack_ids - self.at.keys())} of {len(pack_ids)} packs not terminal")
            await asyncio.sleep(0.5)


@dataclass
class Figures:
    flood: int
    flood_published_s: float
    accept_ms: float
    visible_ms: float
    visible_status: str
    processing_ms: float  # POST -> PROCESSING on packs.status
    streamed_ms: float  # POST -> the PROCESSING event reaches an SSE client of the notifier
    drained_s: float = 0.0
    flood_statuses: dict[str, int] = field(default_factory=dict)
    flooders: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return [
            f"flood: {self.flood} pack requests published straight to Kafka in {self.flood_published_s:.1f} s",
            f"bystander POST -> 202: {self.accept_ms:.1f} ms",
            f"bystander POST -> snapshot answers: {self.visible_ms:.0f} ms (status {self.visible_status})",
            f"bystander POST -> PROCESSING: {self.processing_ms:.0f} ms on packs.status, "
            f"{self.streamed_ms:.0f} ms to an SSE client",
            f"flood drained (every pack terminal) {self.drained_s:.1f} s after the bystander's POST: "
            f"{self.flood / max(self.drained_s, 1e-9):.0f} packs/s; {self.flood_statuses}",
        ]


async def flood_then_bystander(s: RunningStack, requests: int, users: int, drain_timeout: float = 900) -> Figures:
    terminals = Terminals()
    follower = asyncio.create_task(terminals.follow(s))
    try:
        flooders = list(await asyncio.gather(*(s.create_user(credits=requests // users + 1) for _ in range(users))))
        seller = await s.create_user(credits=10)
        flood = [
            PackRequested(pack_id=uuid.uuid4(), user_id=flooders[i % users], product=Product(name=f"Bulk item {i}"),
                          images=["main"], source="bulk-importer")
            for i in range(requests)
        ]
        publisher = Publisher(s.kafka, "intake-bench")
        t0 = time.perf_counter()
        await publisher.enqueue([Outgoing.of(s.topics.packs_requested, ev, ev.user_id) for ev in flood])
        await publisher.flush()
        await publisher.stop()
        published = time.perf_counter() - t0

        t0, wall0 = time.perf_counter(), time.time()
        accepted = await s.post_pack(seller, {"product": {"name": "Seller's lamp"}, "images": ["main", "detail"]})
        accept_ms = (time.perf_counter() - t0) * 1000
        pack_id = accepted.json()["pack_id"]
        snapshot = await s.snapshot(pack_id, seller)  # the notifier answers as soon as it knows the pack
        visible_ms = (time.perf_counter() - t0) * 1000
        status = snapshot.json().get("status", f"HTTP {snapshot.status_code}")
        streamed_ms = float("nan")
        async for ev in sse.follow(f"{s.notifier}/v1/packs/{pack_id}/events", s.auth(seller)):
            if ev.event == "pack" and ev.json()["status"] != PackState.DRAFT:
                streamed_ms = (time.perf_counter() - t0) * 1000
                break
        await terminals.until_processing(pack_id, timeout=120)  # this reader may lag the notifier
        processing_ms = (terminals.processing[pack_id] - wall0) * 1000
        figures = Figures(requests, published, accept_ms, visible_ms, status, processing_ms, streamed_ms, flooders=flooders)
        flood_ids = {str(ev.pack_id) for ev in flood}
        await terminals.until(flood_ids | {pack_id}, drain_timeout)
        figures.drained_s = max(terminals.at[p] for p in flood_ids) - wall0
        for p in flood_ids:
            figures.flood_statuses[terminals.statuses[p]] = figures.flood_statuses.get(terminals.statuses[p], 0) + 1
        return figures
    finally:
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)


async def bench(args: argparse.Namespace, bootstrap: str, work: Path) -> None:
    with RunningStack.started(bootstrap, work, **FAST) as s:
        figures = await flood_then_bystander(s, args.requests, args.users)
        print("\n".join(figures.lines()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--users", type=int, default=50)
    args = parser.parse_args()
    return run_with_broker(lambda bootstrap, work: bench(args, bootstrap, work))


if __name__ == "__main__":
    raise SystemExit(main())
