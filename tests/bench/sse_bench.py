"""`make bench-sse`: N concurrent SSE clients on ONE notifier process; publish status
events to Kafka and measure delivery latency at the clients. A benchmark that prints
figures, not a test. Bounded in time, loopback only, cleans up what it starts.

python -m tests.bench.sse_bench [--clients 2000] [--packs 100] [--events 5]"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid
from pathlib import Path

from services.cli.stack import Stack
from shared.auth import make_api_key
from shared.devbroker import free_port
from shared.events import ImageEntry, ImageStatus, PackStatus
from shared.kafka import KafkaConfig, Outgoing, Publisher
from shared.topics import Topics
from tests.bench.common import run_with_broker


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Client:
    """A minimal SSE client on a raw socket: the load generator must stay cheap."""

    def __init__(self, port: int, pack_id: str, key: str) -> None:
        self.port, self.pack_id, self.key = port, pack_id, key
        self.connected = asyncio.Event()
        self.latencies: list[float] = []

    async def run(self, expected: int, done: asyncio.Event) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port, limit=1 << 20)
        writer.write(
            f"GET /v1/packs/{self.pack_id}/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {self.key}\r\n"
            "Accept: text/event-stream\r\n\r\n".encode()
        )
        await writer.drain()
        try:
            while len(self.latencies) < expected and not done.is_set():
                line = await reader.readline()
                if not line:
                    return
                if line.startswith(b"data:"):
                    data = json.loads(line[5:])
                    sent = data.get("error")
                    if sent and sent.startswith("t="):
                        self.latencies.append(time.time() - float(sent[2:]))
                    else:
                        self.connected.set()
        finally:
            writer.close()


async def bench(args: argparse.Namespace, bootstrap: str, work: Path) -> None:
    prefix, secret = f"b{uuid.uuid4().hex[:8]}.", uuid.uuid4().hex
    topics = Topics(prefix)
    port = free_port()
    env = {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "TOPIC_PREFIX": prefix, "PACKLINE_SECRET": secret,
           "VAR_DIR": str(work), "NOTIFIER_PORT": str(port), "NOTIFIER_PING_S": "15"}
    stack = Stack(env, work / "logs", ("notifier",))
    stack.start()
    publisher = Publisher(KafkaConfig(bootstrap), "bench")
    await publisher.start()
    try:
        await asyncio.to_thread(stack.wait_healthy, 60)
        pid = stack.procs["notifier"].pid
        packs = [(str(uuid.uuid4()), f"user-{i % 50}") for i in range(args.packs)]
        await publisher.send([
            Outgoing.of(topics.packs_status, PackStatus(pack_id=p, user_id=u, status="PROCESSING", cost=1,
                                                        images=[ImageEntry(image_id="main", kind="main")]), p)
            for p, u in packs
        ])
        await asyncio.sleep(1)
        rss_before = rss_kb(pid)
        clients = [Client(port, p, make_api_key(secret, u)) for i in range(args.clients) for p, u in [packs[i % len(packs)]]]
        done = asyncio.Event()
        started = time.monotonic()
        tasks = []
        for i, c in enumerate(clients):
            tasks.append(asyncio.create_task(c.run(args.events, done)))
            if i % 200 == 199:
                await asyncio.sleep(0.05)  # a ramp, not a SYN flood
        await asyncio.wait_for(asyncio.gather(*(c.connected.wait() for c in clients)), args.timeout)
        connect_s = time.monotonic() - started
        rss_after = rss_kb(pid)
        for n in range(args.events):
            await publisher.send([
                Outgoing.of(topics.packs_status, ImageStatus(pack_id=p, user_id=u, image=ImageEntry(
                    image_id="main", kind="main", status="GENERATING", attempts=n + 1, error=f"t={time.time()}")), p)
                for p, u in packs
            ])
            await asyncio.sleep(args.gap)
        try:
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), args.timeout)
        except TimeoutError:
            done.set()
        lat = sorted(x * 1000 for c in clients for x in c.latencies)
        q = statistics.quantiles(lat, n=100) if len(lat) > 1 else [0.0] * 99
        print(f"clients connected   {sum(c.connected.is_set() for c in clients)} / {args.clients} in {connect_s:.1f} s")
        print(f"events delivered    {len(lat)} / {args.clients * args.events}")
        print(f"latency ms          p50 {q[49]:.1f}  p90 {q[89]:.1f}  p99 {q[98]:.1f}  max {lat[-1] if lat else 0:.1f}")
        print(f"notifier RSS        {rss_before / 1024:.1f} MiB idle -> {rss_after / 1024:.1f} MiB with clients "
              f"({(rss_after - rss_before) / max(1, args.clients):.1f} KiB per connection)")
    finally:
        await publisher.stop()
        stack.stop()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--clients", type=int, default=2000)
    p.add_argument("--packs", type=int, default=100)
    p.add_argument("--events", type=int, default=5)
    p.add_argument("--gap", type=float, default=0.5, help="seconds between event rounds")
    p.add_argument("--timeout", type=float, default=120)
    args = p.parse_args()
    return run_with_broker(lambda bootstrap, work: bench(args, bootstrap, work))


if __name__ == "__main__":
    sys.exit(main())
