"""What one image costs the generation service itself: a burst of six-image packs goes
straight to `packs.accepted` (as credits publishes them), ONE generation process with the
local backend answering at once (a placeholder image) makes them, and the bench waits for
every `image.completed` on `images.results`. Only the broker and generation run, so the CPU
counted is generation's: fan-out, the job scheduler, the store, claims and the produces.
A benchmark that prints figures, not a test; loopback only; bounded.

Printed: images/s (first pack published -> last result read) and generation's CPU seconds
per 1,000 images (utime + stime from /proc), the broker's beside it; then the same less
what each process uses per second when idle (polling, heartbeats), measured just before the
burst, times the burst's duration: on a busy machine a slower burst costs more idle CPU.

python -m tests.bench.generation_bench [--packs 500] [--latency-ms 0] [--store local|DIR]"""

from __future__ import annotations

import argparse
import asyncio
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from shared.consumer import read_from_start
from shared.events import LISTING_KINDS, ImageCompleted, PackAccepted, Product, decode
from shared.kafka import Outgoing, Publisher
from shared.pricing import spec
from tests.bench.common import file_create_cost, run_with_broker
from tests.bench.load_bench import TICKS, cpu_seconds
from tests.harness import RunningStack

IMAGES_PER_PACK = len(LISTING_KINDS)


def accepted(i: int) -> PackAccepted:
    specs = [spec(kind, 1) for kind in LISTING_KINDS]
    return PackAccepted(pack_id=uuid.uuid4(), user_id=f"u-{i % 8}", product=Product(name=f"Bench {i}"),
                        images=specs, cost=len(specs))


async def results(s: RunningStack, packs: set[str], done: asyncio.Event, seen: set[tuple[str, str]]) -> None:
    consumer, _ = await read_from_start(s.kafka, s.topics.images_results, "generation-bench")
    try:
        async for record in consumer:
            ev = decode(record.value)
            if isinstance(ev, ImageCompleted) and str(ev.pack_id) in packs:
                seen.add((str(ev.pack_id), ev.image_id))
                if len(seen) >= len(packs) * IMAGES_PER_PACK:
                    done.set()
    finally:
        await consumer.stop()


async def burst(s: RunningStack, packs: int, timeout: float) -> tuple[int, float]:
    """Publish `packs` packs at once; (images completed, seconds until the last)."""
    seen: set[tuple[str, str]] = set()
    done = asyncio.Event()
    events = [accepted(i) for i in range(packs)]
    reader = asyncio.create_task(results(s, {str(ev.pack_id) for ev in events}, done, seen))
    publisher = Publisher(s.kafka, "generation-bench")
    await publisher.start()
    try:
        t0 = time.perf_counter()
        await publisher.send(Outgoing.of(s.topics.packs_accepted, ev, ev.pack_id) for ev in events)
        await asyncio.wait_for(done.wait(), timeout)
        return len(seen), time.perf_counter() - t0
    finally:
        await publisher.stop()
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)


def system_seconds(pid: int) -> float:
    """stime alone (/proc/<pid>/stat)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[12]) / TICKS


def py_spy(pid: int, out: str) -> subprocess.Popen[bytes]:
    """A profile of the burst, in py-spy's raw format (for flame graphs): the thread holding
    the GIL, that is where Python spends CPU (system calls made without it are not seen)."""
    exe = Path(sys.executable).with_name("py-spy")
    return subprocess.Popen([str(exe), "record", "-p", str(pid), "-r", "100", "--gil", "-f", "raw", "-o", out],
                            stdout=subprocess.DEVNULL)


def strace(pid: int, out: str) -> subprocess.Popen[bytes]:
    """System calls of the burst, counted (`strace -c`, every thread): slows generation down."""
    return subprocess.Popen(["strace", "-c", "-f", "-p", str(pid), "-o", out], stderr=subprocess.DEVNULL)


def stop(spy: subprocess.Popen[bytes]) -> None:
    spy.send_signal(signal.SIGINT)  # py-spy and strace write their output on SIGINT
    spy.wait(30)


async def bench(args: argparse.Namespace, bootstrap: str, work: Path) -> None:
    env = {
        "IMAGE_BACKEND": "local", "LOCAL_IMAGE_LATENCY_MS": str(args.latency_ms), "LOCAL_IMAGE_RENDER": "placeholder",
        "LOCAL_IMAGE_CALL_LOG": "", "TOPIC_PARTITIONS": "6", "GENERATION_CONCURRENCY": "256",
        "IMAGE_STORE": "" if args.store == "local" else args.store,
    }
    with RunningStack.started(bootstrap, work, services=("generation",), **env) as s:
        pids = {"generation": s.stack.procs["generation"].pid}
        broker_pid = work / "broker.pid"
        if broker_pid.exists():
            pids["broker"] = int(broker_pid.read_text())
        await burst(s, 10, 120)  # warm-up: connections, producers, first fetches, the first rebalance
        idle = {name: cpu_seconds(pid) for name, pid in pids.items()}
        await asyncio.sleep(args.idle_s)  # what polling and heartbeats cost per second, without images
        idle = {name: (cpu_seconds(pid) - idle[name]) / args.idle_s for name, pid in pids.items()}
        disk = file_create_cost(work)
        spy = py_spy(pids["generation"], args.py_spy) if args.py_spy else None
        trace = strace(pids["generation"], args.strace) if args.strace else None
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        kernel = system_seconds(pids["generation"])
        images, took = await burst(s, args.packs, 60 + args.packs / 5)
        used = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
        kernel = system_seconds(pids["generation"]) - kernel
        for tool in (spy, trace):
            if tool is not None:
                await asyncio.to_thread(stop, tool)
    per_k = 1000 / max(1, images)
    print(f"{args.packs} packs ({images} images) published at once, local backend {args.latency_ms} ms: "
          f"all completed in {took:.2f} s, {images / took:.0f} images/s")
    print("  CPU s per 1,000 images:  " + "  ".join(f"{name} {sec * per_k:.2f}" for name, sec in used.items()))
    print("  less the idle CPU/s:      " + "  ".join(
        f"{name} {(sec - idle[name] * took) * per_k:.2f} (idle {idle[name]:.3f}/s)" for name, sec in used.items()))
    print(f"  generation in the kernel: {kernel * per_k:.2f} s per 1,000 images (system calls: sockets, files, threads)")
    print(f"  generation's CPU share:  {used['generation'] / took:.0%} of a core")
    print(f"  just before the burst, {disk}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--packs", type=int, default=500)
    parser.add_argument("--latency-ms", type=int, default=0)
    parser.add_argument("--py-spy", metavar="FILE", help="profile generation during the burst (py-spy raw output)")
    parser.add_argument("--strace", metavar="FILE", help="count generation's system calls during the burst")
    parser.add_argument("--idle-s", type=float, default=5.0, help="how long to measure the idle CPU before the burst")
    parser.add_argument("--store", default="local", help="`local` (VAR_DIR/images) or an IMAGE_STORE value")
    args = parser.parse_args()
    return run_with_broker(lambda bootstrap, work: bench(args, bootstrap, work))


if __name__ == "__main__":
    sys.exit(main())
