"""`make bench-sse`: N concurrent SSE clients on ONE notifier process; publish status
events to Kafka and measure delivery latency at the clients (from the moment each event is
handed to the producer). A benchmark that prints figures, not a test. Bounded in time,
loopback only, cleans up what it starts.

python -m tests.bench.sse_bench [--clients 2000] [--packs 100] [--events 5]"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import cast

import uvloop

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


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    return sum(user_system_s(pid))


def user_system_s(pid: int) -> tuple[float, float]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / os.sysconf("SC_CLK_TCK"), int(fields[12]) / os.sysconf("SC_CLK_TCK")


MARK = b'"error": "t='


class Client(asyncio.Protocol):
    """An SSE client as a bare protocol on the event loop (no task, no stream reader, no
    JSON parsing: it finds the publish time stamped in each event): the load generator
    shares the two cores with the notifier and must cost far less than it."""

    def __init__(self, expected: int, finished: Callable[[], None]) -> None:
        self.expected, self.finished = expected, finished
        self.connected = asyncio.Event()
        self.latencies: list[float] = []
        self.pending = b""
        self.transport: asyncio.Transport | None = None
        self.done = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        now = time.time()
        data = self.pending + data
        end = data.rfind(b"\r\n\r\n") + 4  # what follows is an event not yet complete
        if end < 4:
            self.pending = data
            return
        self.pending, data = data[end:], data[:end]
        if not self.connected.is_set() and b"data:" in data:
            self.connected.set()  # the opening snapshot
        at = data.find(MARK)
        while at >= 0:
            stop = data.index(b'"', at + len(MARK))
            self.latencies.append(now - float(data[at + len(MARK):stop]))
            at = data.find(MARK, stop)
        if len(self.latencies) >= self.expected:
            self.close()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        self.connection_lost(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done:
            self.done = True
            self.finished()


async def connect(port: int, pack_id: str, key: str, client: Client) -> None:
    transport, _ = await asyncio.get_running_loop().create_connection(lambda: client, "127.0.0.1", port)
    transport.write(
        f"GET /v1/packs/{pack_id}/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
        "Accept: text/event-stream\r\n\r\n".encode()
    )


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
        left = args.clients
        all_done = asyncio.Event()

        def finished() -> None:
            nonlocal left
            left -= 1
            if left <= 0:
                all_done.set()

        clients = [Client(args.events, finished) for _ in range(args.clients)]
        cpu = [(cpu_s(pid), time.process_time())]
        started = time.monotonic()
        for i, c in enumerate(clients):
            pack_id, user = packs[i % len(packs)]
            await connect(port, pack_id, make_api_key(secret, user), c)
            if i % 200 == 199:
                await asyncio.sleep(0.05)  # a ramp, not a SYN flood
        await asyncio.wait_for(asyncio.gather(*(c.connected.wait() for c in clients)), args.timeout)
        connect_s = time.monotonic() - started
        rss_after = rss_kb(pid)
        cpu.append((cpu_s(pid), time.process_time()))
        split = user_system_s(pid)
        rounds = multiprocessing.get_context("spawn").Process(
            target=publish_rounds, args=(bootstrap, prefix, packs, args.events, args.gap), daemon=True)
        rounds.start()
        await asyncio.to_thread(rounds.join, args.timeout)
        try:
            await asyncio.wait_for(all_done.wait(), args.timeout)
        except TimeoutError:
            pass
        cpu.append((cpu_s(pid), time.process_time()))
        direct = await direct_writes(port)
        user_s, system_s = (after - before for after, before in zip(user_system_s(pid), split, strict=True))
        rss_end = rss_kb(pid)
        for c in clients:
            c.close()
        lat = sorted(x * 1000 for c in clients for x in c.latencies)
        q = statistics.quantiles(lat, n=100) if len(lat) > 1 else [0.0] * 99
        (n0, c0), (n1, c1), (n2, c2) = cpu
        print(f"clients connected   {sum(c.connected.is_set() for c in clients)} / {args.clients} in {connect_s:.1f} s")
        print(f"events delivered    {len(lat)} / {args.clients * args.events}")
        print(f"latency ms          p50 {q[49]:.1f}  p90 {q[89]:.1f}  p99 {q[98]:.1f}  max {lat[-1] if lat else 0:.1f}")
        print(f"notifier RSS        {rss_before / 1024:.1f} MiB idle -> {rss_after / 1024:.1f} MiB with clients "
              f"({(rss_after - rss_before) / max(1, args.clients):.1f} KiB per connection); {rss_end / 1024:.1f} MiB after the events")
        print(f"CPU seconds         notifier: connect {n1 - n0:.2f}, events {n2 - n1:.2f} "
              f"({(n2 - n1) / max(1, len(lat)) * 1e6:.0f} us per event delivered, {system_s / max(1e-9, user_s + system_s):.0%} of it "
              f"in the kernel); bench client: {c1 - c0:.2f}, {c2 - c1:.2f}")
        print(f"written directly    {direct:.0f} of {len(lat)} events (by the change itself, no stream task woken)")
        load = os.getloadavg()
        print(f"load average        {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} (2 cores; other work on the machine shows here)")
    finally:
        await publisher.stop()
        stack.stop()


def publish_rounds(bootstrap: str, prefix: str, packs: list[tuple[str, str]], events: int, gap: float) -> None:
    """The status events, from a process of their own as a service would publish them: on
    the load client's loop, busy reading the deliveries of a round, the producer's sends
    waited behind it, and that wait counted as delivery latency."""
    async def run() -> None:
        topics = Topics(prefix)
        publisher = Publisher(KafkaConfig(bootstrap), "bench-events")
        await publisher.start()
        try:
            for n in range(events):
                for p, u in packs:  # each stamped as it is handed to the producer, whose sender then gets the loop
                    await publisher.enqueue([Outgoing.of(topics.packs_status, ImageStatus(
                        pack_id=p, user_id=u, image=ImageEntry(image_id="main", kind="main", status="GENERATING",
                                                               attempts=n + 1, error=f"t={time.time()}")), p)])
                    await asyncio.sleep(0)
                await publisher.flush()
                await asyncio.sleep(gap)
        finally:
            await publisher.stop()

    uvloop.run(run())


async def direct_writes(port: int) -> float:
    """The notifier's packline_sse_direct_writes_total, from its /metrics."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
    text = (await reader.read()).decode()
    writer.close()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("packline_sse_direct_writes_total "))


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--clients", type=int, default=2000)
    p.add_argument("--packs", type=int, default=100)
    p.add_argument("--events", type=int, default=5)
    p.add_argument("--gap", type=float, default=0.5, help="seconds between event rounds")
    p.add_argument("--timeout", type=float, default=120)
    args = p.parse_args()
    uvloop.install()  # as the services run: the client's loop must not be what limits
    return run_with_broker(lambda bootstrap, work: bench(args, bootstrap, work))


if __name__ == "__main__":
    sys.exit(main())
