"""`make bench-api`: POST /v1/packs (acks=all) against one api process and a real broker,
twice: as fast as it answers (wrk, closed loop on `--connections` keep-alive connections),
then at a fixed open-loop rate (tests/bench/openloop.py: latency from each request's
scheduled time). Prints requests/s, the latency distribution, the statuses, and the CPU
time per 1,000 requests of the api, of the client and of the broker. A benchmark, not a
test; loopback only; bounded. Needs wrk (`make bench-api` installs it as root).

python -m tests.bench.api_bench [--connections 16] [--seconds 10] [--rps 500] [--idempotency-keys]"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import statistics
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

from services.cli.stack import Stack
from shared.auth import make_api_key
from shared.devbroker import free_port
from tests.bench import openloop
from tests.bench.common import run_with_broker

LUA = Path(__file__).with_name("api_post.lua")
BODY = b'{"product": {"name": "Bench bottle", "description": "750 ml", "features": ["cold 24 h"]}}'
TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int | None) -> float:
    """User + system CPU seconds a process has used so far (0 if it is gone or unknown)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, TypeError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Meter:
    """CPU seconds of the api, the broker and the client over one run."""

    def __init__(self, api: int, broker: int | None, client: float) -> None:
        self.pids, self.client = (api, broker), client
        self.before = [cpu_s(p) for p in self.pids]

    def report(self, requests: int, client_after: float) -> str:
        api, broker = (cpu_s(p) - b for p, b in zip(self.pids, self.before, strict=True))
        per = 1000 / max(1, requests)
        client = client_after - self.client
        line = f"cpu s/1000 api {api * per:.3f}  client {client * per:.3f}"
        if self.pids[1]:
            line += f"  broker {broker * per:.3f}"
        return line + f"   (api {api:.1f} s, client {client:.1f} s in all)"


async def max_throughput(args: argparse.Namespace, port: int, keys_file: Path, api: int, broker: int | None) -> None:
    env = {**os.environ, "PACKLINE_BENCH_KEYS": str(keys_file), "PACKLINE_BENCH_RUN": uuid.uuid4().hex[:8],
           "PACKLINE_BENCH_IDEMPOTENCY": "1" if args.idempotency_keys else "0"}
    meter = Meter(api, broker, children_cpu_s())
    proc = await asyncio.create_subprocess_exec(
        "wrk", "-t", "1", "-c", str(args.connections), "-d", f"{round(args.seconds)}s", "--timeout", "10s", "-s", str(LUA),
        f"http://127.0.0.1:{port}/v1/packs", env=env, stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    cpu = children_cpu_s()
    line = next((x for x in out.decode().splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}):\n{out.decode()}")
    r = json.loads(line.removeprefix("RESULT "))
    codes: Counter[int] = Counter()
    for status, n in r["statuses"]:
        codes[status] += n
    errors = {k: v for k, v in r["errors"].items() if v}
    print(f"\nmax throughput: wrk, {args.connections} connections, {args.seconds:g} s (closed loop)")
    print(f"  requests   {r['requests']} in {r['duration_us'] / 1e6:.1f} s = {r['requests'] / (r['duration_us'] / 1e6):.0f}/s")
    print(f"  statuses   {dict(codes)}{f'  socket errors {errors}' if errors else ''}")
    print(f"  latency ms p50 {r['p50_us'] / 1000:.2f}  p90 {r['p90_us'] / 1000:.2f}  p99 {r['p99_us'] / 1000:.2f}"
          f"  max {r['max_us'] / 1000:.2f}")
    print(f"  {meter.report(r['requests'], cpu)}")


def requests(port: int, keys: list[str], idempotency: bool) -> openloop.Request:
    heads = [f"POST /v1/packs HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
             f"Content-Length: {len(BODY)}\r\nAuthorization: Bearer {k}\r\n" for k in keys]
    run = uuid.uuid4().hex[:8]

    def request(i: int) -> bytes:
        head = heads[i % len(heads)]
        if idempotency:
            head += f"Idempotency-Key: {run}-{i}\r\n"
        return (head + "\r\n").encode() + BODY

    return request


async def fixed_rate(args: argparse.Namespace, port: int, keys: list[str], api: int, broker: int | None) -> None:
    meter = Meter(api, broker, time.process_time())
    r = await openloop.run(port, requests(port, keys, args.idempotency_keys), args.rps, args.seconds)
    cpu = time.process_time()
    q = statistics.quantiles(r.latencies_ms, n=100)
    print(f"\nfixed rate: {args.rps:g}/s for {args.seconds:g} s (open loop, latency from each request's scheduled time)")
    print(f"  requests   {len(r.latencies_ms)} in {r.elapsed_s:.1f} s = {len(r.latencies_ms) / r.elapsed_s:.0f}/s"
          f"  (most waiting for a free connection: {r.max_backlog})")
    print(f"  statuses   {dict(r.statuses)}")
    print(f"  latency ms p50 {q[49]:.2f}  p90 {q[89]:.2f}  p99 {q[98]:.2f}  max {max(r.latencies_ms):.2f}")
    print(f"  {meter.report(len(r.latencies_ms), cpu)}")


async def bench(args: argparse.Namespace, bootstrap: str, work: Path) -> None:
    secret, port = uuid.uuid4().hex, free_port()
    env = {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "TOPIC_PREFIX": f"a{uuid.uuid4().hex[:8]}.", "PACKLINE_SECRET": secret,
           "VAR_DIR": str(work), "API_PORT": str(port), "RATE_LIMIT_PER_S": "100000", "RATE_LIMIT_BURST": "100000"}
    stack = Stack(env, work / "logs", ("api",))
    stack.start()
    try:
        await asyncio.to_thread(stack.wait_healthy, 60)
        keys = [make_api_key(secret, f"user-{i}") for i in range(200)]
        keys_file = work / "keys.txt"
        keys_file.write_text("".join(k + "\n" for k in keys))
        api = stack.procs["api"].pid
        broker_pid = work / "broker.pid"
        broker = int(broker_pid.read_text()) if broker_pid.exists() else None
        print(f"one api process (pid {api}), broker {bootstrap}; client and server share this machine's cores")
        # Warm up: connections, the producer's metadata, the code paths.
        await openloop.run(port, requests(port, keys, args.idempotency_keys), 200, 2, connections=8)
        await max_throughput(args, port, keys_file, api, broker)
        await asyncio.sleep(1)
        await fixed_rate(args, port, keys, api, broker)
    finally:
        stack.stop()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--connections", type=int, default=16, help="wrk's connections in the max-throughput run")
    p.add_argument("--seconds", type=float, default=10, help="length of each run")
    p.add_argument("--rps", type=float, default=500, help="the fixed open-loop rate")
    p.add_argument("--idempotency-keys", action="store_true", help="a new Idempotency-Key on every request")
    args = p.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed: `make bench-api` installs it as root (apt-get install wrk)", file=sys.stderr)
        return 2
    return run_with_broker(lambda bootstrap, work: bench(args, bootstrap, work))


if __name__ == "__main__":
    sys.exit(main())
