"""`make bench-api`: POST /v1/packs at a fixed open-loop rate against one api process and
print the latency distribution. A benchmark, not a test; loopback only; bounded.

python -m tests.bench.api_bench [--rps 300] [--seconds 10]"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx

from services.cli.stack import Stack
from shared.auth import make_api_key
from shared.devbroker import free_port
from tests.bench.common import run_with_broker


async def bench(args: argparse.Namespace, bootstrap: str, work: Path) -> None:
    secret, port = uuid.uuid4().hex, free_port()
    env = {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "TOPIC_PREFIX": f"a{uuid.uuid4().hex[:8]}.", "PACKLINE_SECRET": secret,
           "VAR_DIR": str(work), "API_PORT": str(port), "RATE_LIMIT_PER_S": "100000", "RATE_LIMIT_BURST": "100000"}
    stack = Stack(env, work / "logs", ("api",))
    stack.start()
    try:
        await asyncio.to_thread(stack.wait_healthy, 60)
        keys = [make_api_key(secret, f"user-{i}") for i in range(200)]
        body = {"product": {"name": "Bench bottle", "description": "750 ml", "features": ["cold 24 h"]}}
        latencies: list[float] = []
        run = uuid.uuid4().hex[:8]
        codes: Counter[int] = Counter()
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
        async with httpx.AsyncClient(timeout=10, limits=limits) as client:
            async def one(i: int) -> None:
                t0 = time.perf_counter()
                try:
                    headers = {"Authorization": f"Bearer {keys[i % len(keys)]}"}
                    if args.idempotency_keys:  # each a new key: claimed on api.idempotency and read back first
                        headers["Idempotency-Key"] = f"{run}-{i}"
                    r = await client.post(f"http://127.0.0.1:{port}/v1/packs", json=body, headers=headers)
                    codes[r.status_code] += 1
                except httpx.HTTPError:
                    codes[0] += 1
                latencies.append((time.perf_counter() - t0) * 1000)

            for i in range(50):  # warm up connections and the producer
                await one(i)
            latencies.clear()
            codes.clear()
            total = int(args.rps * args.seconds)
            start = time.perf_counter()
            tasks = []
            for i in range(total):  # open loop: requests leave on schedule whatever the answers
                delay = start + i / args.rps - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(one(i)))
            await asyncio.gather(*tasks)
            elapsed = time.perf_counter() - start
        q = statistics.quantiles(latencies, n=100)
        print(f"requests   {total} in {elapsed:.1f} s = {total / elapsed:.0f}/s (target {args.rps}/s)")
        print(f"statuses   {dict(codes)}")
        print(f"latency ms p50 {q[49]:.2f}  p90 {q[89]:.2f}  p99 {q[98]:.2f}  max {max(latencies):.2f}")
        print("(client and server share this machine's cores; the client's own time is included)")
    finally:
        stack.stop()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--rps", type=float, default=300)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--idempotency-keys", action="store_true", help="a new Idempotency-Key on every request")
    args = p.parse_args()
    return run_with_broker(lambda bootstrap, work: bench(args, bootstrap, work))


if __name__ == "__main__":
    sys.exit(main())
