"""One Kafka hop alone, the unit a pack's critical path is made of: a record produced the
way packline produces (idempotent, acks=all, no linger), read by a consumer waiting in
`getmany`, which produces the next record at once, read by a second consumer. Printed per
rate: the produce's round trip (send -> ack) and each hop (send -> the reader has it),
p50/p90/p99 from clocks inside the records. At a low rate each hop pays the wake-ups of
idle processes and CPUs; at a higher one they are already awake.

A benchmark that prints figures, not a test; loopback only; bounded.

python -m tests.bench.hop_bench [--rates 20,200] [--messages 400] [--warm-up 3000]"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from pathlib import Path

from aiokafka.admin import NewTopic

from shared.consumer import group_member
from shared.kafka import KafkaConfig, Outgoing, Publisher
from tests.bench.common import run_with_broker


def pct(xs: list[float]) -> str:
    xs = sorted(1000 * x for x in xs)
    return " ".join(f"p{q} {xs[min(len(xs) - 1, int(len(xs) * q / 100))]:5.2f}" for q in (50, 90, 99)) + " ms"


async def one_rate(kafka: KafkaConfig, rate: float, messages: int, quiet: bool = False) -> None:
    first, second = f"hop-a-{uuid.uuid4().hex[:8]}", f"hop-b-{uuid.uuid4().hex[:8]}"
    admin = kafka.admin(client_id="hop-bench")
    await admin.start()
    try:
        await admin.create_topics([NewTopic(first, 6, 1), NewTopic(second, 6, 1)])
    finally:
        await admin.close()
    source, relay = Publisher(kafka, "hop-source"), Publisher(kafka, "hop-relay")
    readers = [group_member(kafka, f"hop-{uuid.uuid4().hex[:8]}") for _ in range(2)]
    acks: list[float] = []
    hops: tuple[list[float], list[float]] = ([], [])
    for p in (source, relay):
        await p.start()
    for reader, topic in zip(readers, (first, second), strict=True):
        await reader.start()
        reader.subscribe([topic])

    async def read(i: int) -> None:
        while len(hops[i]) < messages:
            for records in (await readers[i].getmany(timeout_ms=100)).values():
                for record in records:
                    now = time.time()
                    hops[i].append(now - float(record.value or b"0"))
                    if i == 0:
                        await relay.enqueue([Outgoing(second, str(time.time()).encode(), record.key)], keep=False)

    tasks = [asyncio.create_task(read(i)) for i in (0, 1)]
    try:
        for _ in range(300):  # both readers own their partitions (30 s at most)
            if all(r.assignment() for r in readers):
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
        for n in range(messages):
            started = time.perf_counter()
            await source.send([Outgoing(first, str(time.time()).encode(), str(n).encode())])
            acks.append(time.perf_counter() - started)
            await asyncio.sleep(max(0.0, 1 / rate - (time.perf_counter() - started)))
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
    finally:
        for t in tasks:
            t.cancel()
        for r in readers:
            await r.stop()
        for p in (source, relay):
            await p.stop()
    if quiet:
        return
    print(f"{rate:g} records/s, {messages} records:")
    print(f"  produce (send -> ack)           {pct(acks)}")
    print(f"  hop 1 (send -> read)            {pct(hops[0])}")
    print(f"  hop 2 (read, send -> read)      {pct(hops[1])}")


async def bench(args: argparse.Namespace, bootstrap: str, _work: Path) -> None:
    if args.warm_up:  # connections, the broker's JIT
        await one_rate(KafkaConfig(bootstrap), 1000, args.warm_up, quiet=True)
    for rate in args.rates:
        await one_rate(KafkaConfig(bootstrap), rate, args.messages)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rates", type=lambda v: [float(x) for x in v.split(",")], default=[20.0, 200.0])
    p.add_argument("--messages", type=int, default=400)
    p.add_argument("--warm-up", type=int, default=3000, help="records sent unmeasured first, at 1,000/s")
    args = p.parse_args()
    return run_with_broker(lambda bootstrap, work: bench(args, bootstrap, work))


if __name__ == "__main__":
    sys.exit(main())
