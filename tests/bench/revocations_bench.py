"""The start of a process that trusts API keys, on a long revocation feed: fill a fresh
`auth.revocations` with N records (default 1,000,000: user-wide revocations over a pool of
users, and revocations of distinct named keys), then time how long `Revocations` takes to
be ready (read to the end offsets taken at start) and what it costs in memory, in a fresh
process; then the same for a real api process, from its start to `/healthz` 200. A
benchmark, not a test; loopback only; bounded.

The topic is compacted, but a fresh one is all in its active segment, which the broker
never compacts: every record is read. That is the worst case.

python -m tests.bench.revocations_bench [--records 1000000] [--named-share 0.5] [--users 100000] [--no-api]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx

from shared.admin import ensure_topics
from shared.devbroker import free_port
from shared.kafka import KafkaConfig
from shared.revocations import Revocations
from shared.settings import CommonSettings
from tests.bench.common import run_with_broker


def rss_mib(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def records(n: int, named_share: float, users: int) -> list[tuple[bytes, bytes]]:
    """(key, value) pairs of valid events, written out directly (a pydantic model per record
    would make filling slower than reading)."""
    at = "2026-01-01T00:00:00Z"
    named_every = round(1 / named_share) if named_share > 0 else 0
    out = []
    for i in range(n):
        event_id = uuid.uuid4().hex
        if named_every and i % named_every == 0:
            key_id = f"key_{i:016x}"
            value = (f'{{"event_id":"{event_id}","type":"named_key.revoked","version":1,"occurred_at":"{at}",'
                     f'"user_id":"user-{i % users}","key_id":"{key_id}","name":"key {i}","scopes":["packs:read"],'
                     f'"generation":0,"created_at":"{at}","by":"bench"}}')
            out.append((key_id.encode(), value.encode()))
        else:
            user = f"user-{i % users}"
            value = (f'{{"event_id":"{event_id}","type":"key.revoked","version":1,"occurred_at":"{at}",'
                     f'"user_id":"{user}","below_generation":{1 + i // users},"by":"bench"}}')
            out.append((user.encode(), value.encode()))
    return out


async def fill(kafka: KafkaConfig, topic: str, pairs: list[tuple[bytes, bytes]]) -> None:
    producer = kafka.producer(acks=1, linger_ms=20, max_batch_size=1 << 20, max_request_size=8 << 20)
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key) for key, value in pairs]
        await producer.flush()
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def read(bootstrap: str, topic: str) -> dict[str, float]:
    """In this (fresh) process: the reader from start to ready."""
    before = rss_mib()
    feed = Revocations(KafkaConfig(bootstrap), topic)
    t0 = time.perf_counter()
    await feed.start()
    await feed.ready.wait()
    ready_s = time.perf_counter() - t0
    result = {"ready_s": ready_s, "records": feed.records, "rss_before_mib": before, "rss_after_mib": rss_mib(),
              "users": len(feed.min_generation), "named_keys": len(feed.revoked_keys)}
    await feed.stop()
    return result


async def api_start(bootstrap: str, prefix: str, work: Path) -> dict[str, float]:
    """A real api process: from its start to the port answering, and to /healthz 200."""
    port = free_port()
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "TOPIC_PREFIX": prefix, "PACKLINE_SECRET": "bench",
           "VAR_DIR": str(work), "API_PORT": str(port)}
    t0 = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "services.cli", "serve", "api", env=env,
                                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    port_open = refused = None
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            while time.perf_counter() - t0 < 600:
                assert proc.returncode is None, "the api exited"
                try:
                    health = await client.get(f"http://127.0.0.1:{port}/healthz")
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
                    continue
                port_open = port_open or time.perf_counter() - t0
                if health.status_code == 200:
                    break
                if refused is None:
                    answer = await client.post(f"http://127.0.0.1:{port}/v1/packs", json={"product": {"name": "x"}},
                                               headers={"Authorization": "Bearer pk_x.y"})
                    refused = answer.status_code
                await asyncio.sleep(0.05)
            healthy = time.perf_counter() - t0
            rss = rss_mib(proc.pid)
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 15)
    return {"port_open_s": port_open or float("nan"), "healthy_s": healthy, "rss_mib": rss, "status_before_ready": refused or 0}


async def bench(args: argparse.Namespace, bootstrap: str, work: Path) -> None:
    prefix = f"r{uuid.uuid4().hex[:8]}."
    settings = CommonSettings(kafka_bootstrap_servers=bootstrap, topic_prefix=prefix, packline_secret="bench", var_dir=work)
    await ensure_topics(settings)
    topic = settings.topics.auth_revocations
    t0 = time.perf_counter()
    pairs = records(args.records, args.named_share, args.users)
    await fill(settings.kafka, topic, pairs)
    del pairs
    print(f"filled      {args.records:,} records into a fresh {topic} ({settings.topic_partitions} partitions) "
          f"in {time.perf_counter() - t0:.1f} s")
    child = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "tests.bench.revocations_bench", "--read", bootstrap, topic],
        capture_output=True, text=True, timeout=900,
    )
    if child.returncode != 0:
        raise SystemExit(child.stderr[-3000:])
    r = json.loads(child.stdout.strip().splitlines()[-1])
    print(f"reader      ready after {r['ready_s']:.2f} s: {r['records']:,.0f} records = {r['records'] / r['ready_s']:,.0f}/s; "
          f"{r['users']:,.0f} users with a floor, {r['named_keys']:,.0f} named keys revoked")
    print(f"reader RSS  {r['rss_before_mib']:.0f} MiB before start, {r['rss_after_mib']:.0f} MiB when ready "
          f"(+{r['rss_after_mib'] - r['rss_before_mib']:.0f} MiB)")
    if not args.no_api:
        a = await api_start(bootstrap, prefix, work)
        print(f"api process port open after {a['port_open_s']:.2f} s (a key then: {a['status_before_ready']:.0f}), "
              f"/healthz 200 after {a['healthy_s']:.2f} s; RSS {a['rss_mib']:.0f} MiB")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--records", type=int, default=1_000_000)
    p.add_argument("--named-share", type=float, default=0.5, help="share of records that revoke one named key each")
    p.add_argument("--users", type=int, default=100_000, help="users the user-wide revocations are spread over")
    p.add_argument("--no-api", action="store_true", help="skip timing a real api process")
    p.add_argument("--read", nargs=2, metavar=("BOOTSTRAP", "TOPIC"), help=argparse.SUPPRESS)  # the child process
    args = p.parse_args()
    if args.read:
        print(json.dumps(asyncio.run(read(*args.read))))
        return 0
    return run_with_broker(lambda bootstrap, work: bench(args, bootstrap, work))


if __name__ == "__main__":
    sys.exit(main())
