"""`make bench-load`: packline through its public contract, as a user meets it. Packs are
POSTed to the api over HTTP and their completion is read from each user's `/v1/events` SSE
stream on the notifier; the broker, the four services and this load client share the
machine. The local backend answers at once with a placeholder image, so what is measured
is packline itself. A benchmark that prints figures, not a test; loopback only; bounded.

Workloads: `--rate R --seconds S` (open loop, R packs/s) and `--burst N` (N packs at once).
Printed: accept (POST -> 202) p50/p99, POST -> terminal event p50/p99, images/s, and the CPU
seconds each process used per 1,000 images (from /proc), with a warning when the load
client used more than a quarter of a core (then it, not packline, may be the limit).

python -m tests.bench.load_bench [--users 4] [--rate 10 --seconds 20] [--burst 300] [--burst 1500 --users 8]"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.bench.common import file_create_cost, run_with_broker
from tests.bench.hops import hop_times, print_hops
from tests.bench.rawhttp import Connection, sse
from tests.harness import RunningStack

TERMINAL = {"COMPLETED", "PARTIAL", "FAILED", "REJECTED", "CANCELLED"}
TICKS = os.sysconf("SC_CLK_TCK")
BODY = json.dumps({"product": {"name": "Bench bottle", "description": "750 ml", "features": ["cold 24 h"]}}).encode()


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its waited-for children (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / TICKS


@dataclass
class Run:
    sent: dict[str, float] = field(default_factory=dict)  # pack -> when its POST left
    accepts: list[float] = field(default_factory=list)  # ms
    terminal: dict[str, tuple[float, int, str]] = field(default_factory=dict)  # pack -> (when, images, status)
    done: dict[str, float] = field(default_factory=dict)  # packs of this run: when their terminal event came
    images: int = 0
    codes: dict[int, int] = field(default_factory=dict)
    outcomes: dict[str, int] = field(default_factory=dict)  # terminal statuses
    expected: int | None = None  # packs accepted, once every POST has its answer
    all_done: asyncio.Event = field(default_factory=asyncio.Event)
    api: tuple[tuple[dict[float, float], dict[float, float]], ...] = ()  # the api's histograms before and after

    def finished(self, pack: dict[str, Any]) -> None:
        """A terminal event: it may come before the pack's 202 is read (a busy client)."""
        pack_id = str(pack["pack_id"])
        if pack_id not in self.terminal:
            images = sum(1 for img in pack.get("images") or () if img.get("status") == "COMPLETED")
            self.terminal[pack_id] = (time.perf_counter(), images, str(pack["status"]))
            self.check(pack_id)

    def accepted(self, pack_id: str, t0: float) -> None:
        self.sent[pack_id] = t0
        self.check(pack_id)

    def check(self, pack_id: str) -> None:
        if pack_id in self.sent and pack_id in self.terminal and pack_id not in self.done:
            at, images, status = self.terminal[pack_id]
            self.done[pack_id] = at
            self.images += images
            self.outcomes[status] = self.outcomes.get(status, 0) + 1
        if self.expected is not None and len(self.done) == self.expected:
            self.all_done.set()


class Load:
    def __init__(self, s: RunningStack, users: list[str], connections: int) -> None:
        self.s, self.users = s, users
        self.api_port, self.notifier_port = int(s.env["API_PORT"]), int(s.env["NOTIFIER_PORT"])
        self.pool: asyncio.Queue[Connection] = asyncio.Queue()
        for _ in range(connections):
            self.pool.put_nowait(Connection(self.api_port))
        self.run = Run()
        self.streams: list[asyncio.Task[None]] = []

    async def follow(self, user: str, ready: asyncio.Event) -> None:
        async for event, data in sse(self.notifier_port, "/v1/events", self.s.auth(user)):
            ready.set()
            if event == "pack" and data.get("status") in TERMINAL:
                self.run.finished(data)

    async def open_streams(self) -> None:
        for user in self.users:
            ready = asyncio.Event()
            self.streams.append(asyncio.create_task(self.follow(user, ready)))
            await self.s.post_pack(user, {"product": {"name": "warm-up"}, "images": ["main"]})  # a first event to see
            await asyncio.wait_for(ready.wait(), 60)

    async def post(self, i: int) -> None:
        user = self.users[i % len(self.users)]
        conn = await self.pool.get()
        t0 = time.perf_counter()
        try:
            status, data = await conn.post("/v1/packs", BODY, self.s.auth(user))
        finally:
            self.pool.put_nowait(conn)
        self.run.accepts.append((time.perf_counter() - t0) * 1000)
        self.run.codes[status] = self.run.codes.get(status, 0) + 1
        if status == 202:
            self.run.accepted(json.loads(data)["pack_id"], t0)

    async def workload(self, count: int, rate: float | None) -> float:
        """POST `count` packs (at `rate` per second, or all at once); wait for every terminal event."""
        self.run = Run()
        api_before = await api_buckets(self.s)
        start = time.perf_counter()
        tasks = []
        for i in range(count):
            if rate:
                delay = start + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(self.post(i)))
        await asyncio.gather(*tasks)
        self.run.expected = len(self.run.sent)
        self.run.check("")
        await asyncio.wait_for(self.run.all_done.wait(), 60 + count / 5)
        self.run.api = (api_before, await api_buckets(self.s))
        return (max(self.run.done.values(), default=start) - start)

    def close(self) -> None:
        for task in self.streams:
            task.cancel()
        while not self.pool.empty():
            self.pool.get_nowait().close()


@contextmanager
def cpu_of(pids: dict[str, int]) -> Iterator[dict[str, float]]:
    used: dict[str, float] = {}
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    yield used
    used.update({name: cpu_seconds(pid) - before[name] for name, pid in pids.items()})


async def api_buckets(s: RunningStack) -> tuple[dict[float, float], dict[float, float]]:
    """The api's histograms, upper bound (s) -> count so far: Kafka's acknowledgement time in
    the accept, and the whole POST /v1/packs 202 as the api timed it."""
    acks = {float(labels.split('"')[1]): v for labels, v in await s.metric("api", "packline_api_produce_seconds_bucket")}
    posts = {float(labels.rsplit('le="', 1)[1].split('"')[0]): v
             for labels, v in await s.metric("api", "packline_http_request_duration_seconds_bucket")
             if 'route="/v1/packs"' in labels and 'method="POST"' in labels and 'status="202"' in labels}
    return acks, posts


def bucket_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """The upper bound of the bucket holding quantile `q` of what was observed between the two readings."""
    counts = sorted((bound, after[bound] - before.get(bound, 0)) for bound in after)
    total = counts[-1][1] if counts else 0
    return next((bound for bound, n in counts if n >= q * total), float("inf"))


def report(title: str, load: Load, wall: float, used: dict[str, float]) -> None:
    run = load.run
    accept = statistics.quantiles(run.accepts, n=100) if len(run.accepts) > 1 else [0.0] * 99
    total = [(run.done[p] - t0) * 1000 for p, t0 in run.sent.items() if p in run.done]
    end_to_end = statistics.quantiles(total, n=100) if len(total) > 1 else [0.0] * 99
    print(f"\n{title}: {len(run.sent)} packs ({run.images} images) in {wall:.2f} s; HTTP {run.codes}; packs {run.outcomes}")
    print(f"  accept (POST -> 202)        p50 {accept[49]:7.1f} ms   p99 {accept[98]:7.1f} ms")
    print(f"  POST -> terminal event      p50 {end_to_end[49]:7.1f} ms   p99 {end_to_end[98]:7.1f} ms")
    if run.api:
        (acks_before, posts_before), (acks_after, posts_after) = run.api
        for what, before, after in (("in the api", posts_before, posts_after), ("of which Kafka's ack", acks_before, acks_after)):
            print(f"    {what:<24}p50 ≤ {bucket_quantile(before, after, 0.5) * 1000:5.0f} ms   "
                  f"p99 ≤ {bucket_quantile(before, after, 0.99) * 1000:5.0f} ms (the api's histogram buckets)")
    print(f"  throughput                  {run.images / wall if wall else 0:7.0f} images/s")
    per_k = 1000 / max(1, run.images)
    print("  CPU s per 1,000 images:     " + "  ".join(f"{name} {sec * per_k:.2f}" for name, sec in used.items()))
    print("  CPU share of the run:       " + "  ".join(f"{name} {sec / wall:.0%}" for name, sec in used.items() if wall))
    if wall and used.get("load client", 0) / wall > 0.25:
        print("  WARNING: the load client used more than a quarter of a core: it may be what limits this run")


async def bench(args: argparse.Namespace, bootstrap: str, work: Path) -> None:
    env = {
        "LOCAL_IMAGE_LATENCY_MS": str(args.image_ms), "LOCAL_IMAGE_RENDER": "placeholder", "LOCAL_IMAGE_CALL_LOG": "",
        "TOPIC_PARTITIONS": "6", "GENERATION_CONCURRENCY": "256", "RATE_LIMIT_PER_S": "100000",
        "RATE_LIMIT_BURST": "100000", "INTAKE_MAX_QUEUED_PER_USER": "100000",
    }
    with RunningStack.started(bootstrap, work, **env) as s:
        users = [await s.create_user(credits=10**8) for _ in range(args.users)]
        pids = {name: proc.pid for name, proc in s.stack.procs.items()}
        broker_pid = work / "broker.pid"
        if broker_pid.exists():
            pids["broker"] = int(broker_pid.read_text())
        pids["load client"] = os.getpid()
        load = Load(s, users, args.connections)
        print(file_create_cost(work))
        try:
            await load.open_streams()
            await load.workload(200, rate=50)  # warm-up: connections, producers, the broker's JIT
            if args.rate:
                with cpu_of(pids) as used:
                    wall = await load.workload(int(args.rate * args.seconds), rate=args.rate)
                report(f"{args.rate:g} packs/s for {args.seconds:g} s, {args.users} users", load, wall, used)
                wall_clock = time.time() - time.perf_counter()
                print_hops(await hop_times(s, {p: t + wall_clock for p, t in load.run.sent.items()},
                                           {p: t + wall_clock for p, t in load.run.done.items()}))
            for burst in filter(None, args.burst):
                with cpu_of(pids) as used:
                    wall = await load.workload(burst, rate=None)
                report(f"{burst} packs at once, {args.users} users", load, wall, used)
        finally:
            load.close()
    print("\n(one process per service; broker, services and load client share this machine's cores)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=4)
    p.add_argument("--rate", type=float, default=10.0, help="packs per second (0: no fixed-rate run)")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--burst", type=int, action="append", default=[], help="packs at once (repeatable)")
    p.add_argument("--connections", type=int, default=32, help="keep-alive connections to the api")
    p.add_argument("--image-ms", type=int, default=0, help="the local backend's time per image")
    args = p.parse_args()
    return run_with_broker(lambda bootstrap, work: bench(args, bootstrap, work))


if __name__ == "__main__":
    sys.exit(main())
