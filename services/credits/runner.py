"""Where ledger work runs. On PostgreSQL: in a pool of threads (each transaction waits on
round trips to the server, and row locks let several run at once). On SQLite: one thread,
SQLite having one writer; and a small piece of work (what a quiet moment brings: a pack
request or a few image outcomes) runs on the event loop itself while that thread is idle.
A millisecond of SQLite costs less there than the two hand-offs around it, to the thread
and back, which took 0.6 ms at p50 and 4-8 ms at p90 in credits at 10 packs/s on two
shared cores. A large batch still goes to the thread, so the loop goes on fetching and
decoding the next one while SQLite writes. Several credits processes on one SQLite file
(tests and chaos runs; production runs PostgreSQL) can keep a transaction on the loop
waiting for the file's lock as long as another process's transaction: milliseconds."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
INLINE_ITEMS = 8  # pack requests or image outcomes: about a millisecond each of SQLite at most


class LedgerRunner:
    def __init__(self, database_url: str) -> None:
        self.sqlite = database_url.startswith("sqlite")
        self.executor = ThreadPoolExecutor(max_workers=1 if self.sqlite else 8, thread_name_prefix="ledger")
        self._in_thread = 0  # calls in the executor now: while any, SQLite work waits its turn there

    async def __call__(self, fn: Callable[..., T], /, *args: Any, items: int) -> T:
        """`fn(*args)`, a transaction over `items` requests or outcomes."""
        if self.sqlite and items <= INLINE_ITEMS and not self._in_thread:
            return fn(*args)
        self._in_thread += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, functools.partial(fn, *args))
        finally:
            self._in_thread -= 1

    def shutdown(self) -> None:
        self.executor.shutdown(wait=True)
