"""`make bench-notifier-start`: a notifier's start on a long history. For each size, fill a
fresh `packs.status` with the events of N finished six-image packs (15 events each: DRAFT,
PROCESSING, GENERATING and COMPLETED per image, COMPLETED), let a real notifier process
build its read model from them (from offset 0: what every start cost before the read
model), stop it, then time real notifier processes started on the built read model:
from the process's start to `/healthz` 200, and its RSS then. A benchmark, not a test;
loopback only; cleans up what it starts.

`--build direct` builds the read model in this process instead, with the notifier's own
code (`Store.apply` on every event, `ReadModel.write` with the end offsets as the
checkpoint), without reading the topic back. `--baseline PATH` also times the notifier of
another checkout (e.g. one without a read model) on the same topic, up to `--baseline-max` packs.

python -m tests.bench.notifier_start_bench [--sizes 10000,100000,1000000] [--starts 3]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import httpx
from aiokafka.partitioner import DefaultPartitioner

from shared.admin import ensure_topics
from shared.devbroker import free_port
from shared.events import ImageEntry, ImageStatus, PackStatus
from shared.kafka import KafkaConfig
from shared.settings import CommonSettings
from tests.bench.common import run_with_broker
from tests.bench.revocations_bench import rss_mib

KINDS = ("main", "lifestyle", "infographic", "detail", "scale", "packaging")
TEMPLATE_PACK = uuid.UUID("00000000-0000-4000-8000-00000000cafe")
TEMPLATE_USER = "user-template"


def template() -> list[bytes]:
    """One finished six-image pack's events as the services encode them, with a
    placeholder pack id and user (event ids derive from the pack id, as the real ones do)."""
    pid, user = TEMPLATE_PACK, TEMPLATE_USER
    at = "2025-06-01T12:00:{:02d}Z"
    images = [ImageEntry(image_id=k, kind=k) for k in KINDS]
    events: list[PackStatus | ImageStatus] = [
        PackStatus(event_id=f"{pid}/DRAFT", pack_id=pid, user_id=user, status="DRAFT", cost=6, images=images,
                   occurred_at=at.format(0)),
        PackStatus(event_id=f"{pid}/PROCESSING", pack_id=pid, user_id=user, status="PROCESSING", cost=6, charged=6,
                   images=images, occurred_at=at.format(1)),
    ]
    done = []
    for n, k in enumerate(KINDS):
        events.append(ImageStatus(event_id=f"{pid}/{k}/GENERATING", pack_id=pid, user_id=user, occurred_at=at.format(2 + n),
                                  image=ImageEntry(image_id=k, kind=k, status="GENERATING", attempts=1)))
        entry = ImageEntry(image_id=k, kind=k, status="COMPLETED", attempts=1, url=f"http://127.0.0.1:8000/v1/images/{pid}/{k}")
        done.append(entry)
        events.append(ImageStatus(event_id=f"{pid}/{k}/COMPLETED", pack_id=pid, user_id=user, image=entry,
                                  occurred_at=at.format(20 + n)))
    events.append(PackStatus(event_id=f"{pid}/COMPLETED", pack_id=pid, user_id=user, status="COMPLETED", cost=6, charged=6,
                             images=done, occurred_at=at.format(40)))
    return [e.encode() for e in events]


@dataclass(frozen=True)
class History:
    """N packs over `users` users, each pack's events in one partition (Kafka's own key
    partitioner), generated again identically whenever asked for."""

    packs: int
    users: int
    partitions: int
    seed: int

    def packs_of(self) -> Iterator[tuple[bytes, int, list[bytes]]]:
        """(key, partition, encoded events) per pack."""
        events = template()
        pid_b, user_b = str(TEMPLATE_PACK).encode(), TEMPLATE_USER.encode()
        partitioner = DefaultPartitioner()
        everyone = list(range(self.partitions))
        for i in range(self.packs):
            key = str(uuid.UUID(int=(self.seed << 64) | i)).encode()
            user = f"user-{i % self.users}".encode()
            yield key, partitioner(key, everyone, everyone), [e.replace(pid_b, key).replace(user_b, user) for e in events]


async def fill(kafka: KafkaConfig, topic: str, history: History) -> dict[int, int]:
    """Write the history with batches built here (no per-message coroutine), several
    partitions at once; returns each partition's end offset."""
    producer = kafka.producer(acks=1, linger_ms=50, max_batch_size=1 << 20, max_request_size=8 << 20)
    await producer.start()
    counts = dict.fromkeys(range(history.partitions), 0)
    try:
        batches = {p: producer.create_batch() for p in counts}
        in_flight: deque[asyncio.Future[object]] = deque()  # a window of batches sent, not yet acknowledged
        for key, partition, values in history.packs_of():
            for value in values:
                if batches[partition].append(key=key, value=value, timestamp=None) is None:
                    in_flight.append(await producer.send_batch(batches[partition], topic, partition=partition))
                    batches[partition] = producer.create_batch()
                    batches[partition].append(key=key, value=value, timestamp=None)
                    while len(in_flight) > 4 * history.partitions:
                        await in_flight.popleft()
                counts[partition] += 1
        for partition, batch in batches.items():
            if batch.record_count():
                in_flight.append(await producer.send_batch(batch, topic, partition=partition))
        await asyncio.gather(*in_flight)
    finally:
        await producer.stop()
    return counts


def build_direct(db: Path, topic: str, history: History, ends: dict[int, int]) -> None:
    """The read model as a notifier would build it, in this process: every event through
    `Store.apply`, written by `ReadModel.write` in the notifier's batches, checkpoint = ends."""
    from services.notifier.consumer import FeedDecoder, StatusFeed
    from services.notifier.readmodel import ReadModel
    from services.notifier.state import Store

    model = ReadModel(db, topic)
    store = Store(500, model)
    store.render = False
    decode = FeedDecoder()
    offsets = dict.fromkeys(range(history.partitions), 0)
    for _key, partition, values in history.packs_of():
        for value in values:  # one pack's events in a row: the store does not care how packs interleave
            store.at(partition, offsets[partition])
            offsets[partition] += 1
            store.apply(decode(value))
        if len(store.dirty) >= StatusFeed.flush_packs:
            model.write(*store.take_changes())
            store.evict()
    assert offsets == ends, (offsets, ends)
    model.write(*store.take_changes())
    model.close()


@dataclass
class Start:
    ready_s: float
    rss_mib: float
    packs_in_memory: int


def log_file(env: dict[str, str], port: int) -> BinaryIO:
    return (Path(env["VAR_DIR"]) / f"notifier-{port}.log").open("ab")


async def start_notifier(
    env: dict[str, str], port: int, cwd: Path | None = None, timeout: float = 3600,
) -> tuple[Start, asyncio.subprocess.Process]:
    """A notifier process from its start to /healthz 200 (its RSS then); left running."""
    t0 = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli", "serve", "notifier", env=env, cwd=cwd,
        stdout=subprocess.DEVNULL, stderr=log_file(env, port),
    )
    async with httpx.AsyncClient(timeout=5) as client:
        while True:
            if proc.returncode is not None:
                raise RuntimeError(f"the notifier exited with {proc.returncode}; see {env['VAR_DIR']}/notifier-{port}.log")
            if time.perf_counter() - t0 > timeout:
                raise TimeoutError("the notifier did not get ready")
            try:
                health = await client.get(f"http://127.0.0.1:{port}/healthz")
            except httpx.TransportError:
                await asyncio.sleep(0.05)
                continue
            if health.status_code == 200:
                ready = time.perf_counter() - t0
                return Start(ready, rss_mib(proc.pid), int(health.json().get("packs", 0))), proc
            await asyncio.sleep(0.05)


async def stop(proc: asyncio.subprocess.Process) -> float:
    t0 = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), 120)
    except TimeoutError:
        proc.kill()
        await proc.wait()
    return time.perf_counter() - t0


def mib(path: Path) -> float:
    return sum(Path(f"{path}{s}").stat().st_size for s in ("", "-wal") if Path(f"{path}{s}").exists()) / (1 << 20)


async def one_size(args: argparse.Namespace, bootstrap: str, work: Path, packs: int) -> None:
    prefix = f"n{uuid.uuid4().hex[:8]}."
    var = work / f"size-{packs}"
    var.mkdir()
    settings = CommonSettings(kafka_bootstrap_servers=bootstrap, topic_prefix=prefix, packline_secret="bench", var_dir=var,
                              topic_partitions=args.partitions)
    await ensure_topics(settings)
    topic = settings.topics.packs_status
    history = History(packs, args.users, args.partitions, uuid.uuid4().int >> 65)
    t0 = time.perf_counter()
    ends = await fill(settings.kafka, topic, history)
    records = sum(ends.values())
    fill_s = time.perf_counter() - t0
    print(f"\n{packs:,} packs: filled {records:,} records ({args.partitions} partitions) in {fill_s:.1f} s "
          f"({records / fill_s:,.0f}/s)", flush=True)
    port = free_port()
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "TOPIC_PREFIX": prefix, "PACKLINE_SECRET": "bench",
           "VAR_DIR": str(var), "NOTIFIER_PORT": str(port), "TOPIC_PARTITIONS": str(args.partitions)}
    db = var / f"notifier-{port}.db"
    if args.build == "direct":
        t0 = time.perf_counter()
        await asyncio.to_thread(build_direct, db, topic, history, ends)
        print(f"  read model built in this process with the notifier's Store and ReadModel in "
              f"{time.perf_counter() - t0:.1f} s: {mib(db):,.0f} MiB", flush=True)
    else:
        first, proc = await start_notifier(env, port)
        stopped = await stop(proc)
        print(f"  first start, read model built by the notifier from offset 0: ready after {first.ready_s:.2f} s, "
              f"RSS {first.rss_mib:.0f} MiB; stopped in {stopped:.1f} s; {mib(db):,.0f} MiB on disk", flush=True)
    starts = []
    for _ in range(args.starts):
        start, proc = await start_notifier(env, port)
        await stop(proc)
        starts.append(start)
        print(f"  start on the read model: ready after {start.ready_s:.2f} s, RSS {start.rss_mib:.0f} MiB, "
              f"{start.packs_in_memory} packs in memory", flush=True)
    ready = statistics.median(s.ready_s for s in starts)
    rss = statistics.median(s.rss_mib for s in starts)
    RESULTS.append((packs, ready, rss))
    if args.baseline and packs <= args.baseline_max:
        base_var = var / "baseline"
        base_var.mkdir()
        base_port = free_port()
        base_env = {**env, "VAR_DIR": str(base_var), "NOTIFIER_PORT": str(base_port)}
        base, proc = await start_notifier(base_env, base_port, cwd=Path(args.baseline))
        await stop(proc)
        print(f"  baseline notifier ({args.baseline}): ready after {base.ready_s:.2f} s, RSS {base.rss_mib:.0f} MiB", flush=True)


RESULTS: list[tuple[int, float, float]] = []


async def bench(args: argparse.Namespace, bootstrap: str, work: Path) -> None:
    for packs in args.sizes:
        await one_size(args, bootstrap, work, packs)
    print("\npacks ever made   ready (median)   RSS when ready")
    for packs, ready, rss in RESULTS:
        print(f"{packs:>15,}   {ready:>12.2f} s   {rss:>10.0f} MiB")
    if len(RESULTS) > 1:
        (small, r0, m0), (large, r1, m1) = RESULTS[0], RESULTS[-1]
        print(f"{large:,} vs {small:,} packs: start x{r1 / r0:.2f}, RSS x{m1 / m0:.2f}")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", type=lambda v: [int(x) for x in v.split(",")], default=[10_000, 100_000, 1_000_000])
    p.add_argument("--partitions", type=int, default=6)
    p.add_argument("--users", type=int, default=1000)
    p.add_argument("--starts", type=int, default=3, help="starts timed on each built read model")
    p.add_argument("--build", choices=("notifier", "direct"), default="notifier")
    p.add_argument("--baseline", help="another checkout whose notifier is timed on the same topic")
    p.add_argument("--baseline-max", type=int, default=100_000)
    args = p.parse_args()
    logging.getLogger("aiokafka").setLevel(logging.ERROR)  # leaders of the fresh topic are elected while filling
    return run_with_broker(lambda bootstrap, work: bench(args, bootstrap, work))


if __name__ == "__main__":
    sys.exit(main())
