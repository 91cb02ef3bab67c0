"""The credits ledger on its own, without Kafka: how much CPU the ledger's two hot paths
cost per image. Packs of six images are accepted in intake-sized batches, then all their
outcomes are recorded in poll-sized batches (mostly deliveries, a few failures that
refund). Prints packs/s, outcomes/s and CPU seconds (this process) per 1,000 images for
each phase. On PostgreSQL the server's own CPU is not counted.

python -m tests.bench.ledger_bench [--packs 1500] [--users 8] [--database-url postgresql+psycopg://...]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from services.credits.ledger import ImageOutcome, Ledger, PackOrder
from shared.events import ImageSpec, PackState

KINDS = ("main", "lifestyle", "infographic", "detail", "scale", "packaging")
T = TypeVar("T")


def batches(items: Sequence[T], size: int) -> list[Sequence[T]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def timed(name: str, images: int, units: int, unit: str, work: Callable[[], None]) -> None:
    wall, cpu = time.perf_counter(), time.process_time()
    work()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(f"  {name:<16} {units / wall:8.0f} {unit}/s   {1000 * cpu / images:6.3f} CPU s per 1,000 images"
          f"   ({units} {unit} in {wall:.2f} s, {cpu:.2f} CPU s)")


def run(url: str, packs: int, users: int, accept_batch: int, record_batch: int, failures: float) -> None:
    ledger = Ledger(url)
    ledger.create_schema()
    tag = uuid.uuid4().hex[:8]  # a database used before keeps its rows: these are new ones
    user_ids = [f"bench-{tag}-{u}" for u in range(users)]
    for user in user_ids:
        ledger.create_account(user, 10 * packs)
    specs = [ImageSpec(image_id=k, kind=k, cost=1) for k in KINDS]
    orders = [PackOrder(str(uuid.uuid4()), user_ids[i % users], specs) for i in range(packs)]
    rng = random.Random(7)
    outcomes = [
        ImageOutcome(o.pack_id, k, 0, delivered, attempts=1, url=f"img/{o.pack_id}/{k}" if delivered else None,
                     error=None if delivered else "policy")
        for o in orders for k in KINDS for delivered in [rng.random() >= failures]
    ]
    images = len(outcomes)
    print(f"ledger on {url.split(':', 1)[0]}: {packs} packs of {len(KINDS)} images, {users} users, "
          f"accepted {accept_batch} per batch, outcomes {record_batch} per batch")
    timed("accept_packs", images, packs, "packs", lambda: [ledger.accept_packs(b) for b in batches(orders, accept_batch)])
    timed("record_images", images, images, "outcomes",
          lambda: [ledger.record_images(b) for b in batches(outcomes, record_batch)])
    views = [ledger.pack(o.pack_id) for o in orders[:50]]
    settled = sum(v is not None and v.status in (PackState.COMPLETED, PackState.PARTIAL, PackState.FAILED) for v in views)
    print(f"  check: {settled} of {len(views)} sampled packs settled")
    ledger.engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--packs", type=int, default=1500)
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--accept-batch", type=int, default=100)
    parser.add_argument("--record-batch", type=int, default=200)
    parser.add_argument("--failures", type=float, default=0.05, help="share of outcomes that are failures")
    parser.add_argument("--database-url", help="default: a fresh SQLite file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ledger-bench-") as scratch:
        url = args.database_url or f"sqlite:///{Path(scratch) / 'credits.db'}"
        run(url, min(args.packs, 100_000), args.users, args.accept_batch, args.record_batch, args.failures)


if __name__ == "__main__":
    main()
