"""What the benchmarks share: a broker of their own (unless KAFKA_BOOTSTRAP_SERVERS is
set) and a scratch directory (under BENCH_DIR when set), both removed at the end, also on
error; and a probe of what creating a file costs in that directory.

The probe is printed with the figures because on some disks it is neither small nor
stable: on the 2-core VM the figures in docs/operations.md come from, creating a file
(what every image saved to the local store does, twice) cost 20-35 microseconds in one
minute and 300-800 the next, and the generation service's CPU per image followed it."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from shared.devbroker import Broker, free_port


def run_with_broker(bench: Callable[[str, Path], Awaitable[None]]) -> int:
    work = Path(tempfile.mkdtemp(prefix="packline-bench-", dir=os.environ.get("BENCH_DIR") or None))
    broker = None
    try:
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        if not bootstrap:
            broker = Broker(work / "kafka", free_port(), free_port())
            broker.start(120)
            bootstrap = broker.bootstrap
            (work / "broker.pid").write_text(str(broker.pid))  # for benchmarks that account its CPU
        asyncio.run(bench(bootstrap, work))
        return 0
    finally:
        if broker:
            broker.stop()
        shutil.rmtree(work, ignore_errors=True)


def file_create_cost(where: Path, files: int = 400) -> str:
    """CPU microseconds per file created the image store's way (a temporary file written and
    renamed into place, a directory per 20 files), measured in `where` now."""
    from shared.images import atomic_write

    probe = where / ".file-probe"
    cpu = time.process_time()
    for i in range(files):
        atomic_write(probe / str(i // 20) / f"{i}.png", b"x" * 256)
    took = (time.process_time() - cpu) / files * 1e6
    shutil.rmtree(probe, ignore_errors=True)
    return f"creating a file in {where} costs {took:.0f} us of CPU now (a saved image creates two)"
