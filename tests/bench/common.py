"""What both benchmarks share: a broker of their own (unless KAFKA_BOOTSTRAP_SERVERS is
set) and a scratch directory, both removed at the end, also on error."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

from shared.devbroker import Broker, free_port


def run_with_broker(bench: Callable[[str, Path], Awaitable[None]]) -> int:
    work = Path(tempfile.mkdtemp(prefix="packline-bench-"))
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
