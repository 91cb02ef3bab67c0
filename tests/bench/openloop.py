"""An open-loop HTTP/1.1 load client for `make bench-api`: requests are due on a fixed
schedule whatever the answers, and each one's latency runs from when it was due, not from
when a connection was free to send it, so a server that falls behind shows in the figures
(no coordinated omission). asyncio protocols on keep-alive connections, no parsing beyond
the status line and Content-Length: it must cost far less CPU than the server it measures."""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

Request = Callable[[int], bytes]  # the i-th request's bytes


@dataclass
class Results:
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    elapsed_s: float = 0.0
    max_backlog: int = 0  # requests due while every connection was busy


class _Connection(asyncio.Protocol):
    """One request at a time; `on_answer(self, status)` when its response has fully arrived."""

    def __init__(self, on_answer: Callable[[_Connection, int], None], on_lost: Callable[[_Connection], None]) -> None:
        self.on_answer, self.on_lost = on_answer, on_lost
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.due = 0.0  # when the request in flight was scheduled (perf_counter)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def send(self, data: bytes, due: float) -> None:
        assert self.transport is not None
        self.due = due
        self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end]).lower()
        length, at = 0, head.find(b"\r\ncontent-length:")
        if at >= 0:
            stop = head.find(b"\r\n", at + 2)
            length = int(head[at + 17:stop if stop >= 0 else len(head)])
        if len(self.buffer) < end + 4 + length:
            return
        status = int(head[9:12])
        del self.buffer[:end + 4 + length]
        self.on_answer(self, status)

    def connection_lost(self, exc: Exception | None) -> None:
        self.on_lost(self)


async def run(port: int, request: Request, rate: float, seconds: float, connections: int = 64) -> Results:
    """`rate * seconds` requests, the i-th due at start + i / rate, on up to `connections`
    keep-alive connections; a request due while all are busy waits for the first free one
    (and that wait counts in its latency)."""
    loop = asyncio.get_running_loop()
    results = Results()
    idle: list[_Connection] = []
    backlog: deque[tuple[int, float]] = deque()
    total = int(rate * seconds)
    finished = loop.create_future()
    answered = 0

    def on_answer(conn: _Connection, status: int) -> None:
        nonlocal answered
        results.latencies_ms.append((time.perf_counter() - conn.due) * 1000)
        results.statuses[status] += 1
        answered += 1
        if backlog:
            i, due = backlog.popleft()
            conn.send(request(i), due)
        else:
            idle.append(conn)
        if answered == total and not finished.done():
            finished.set_result(None)

    def on_lost(conn: _Connection) -> None:
        if conn in idle:
            idle.remove(conn)
        elif not finished.done():
            finished.set_exception(ConnectionError("the server closed a connection with a request in flight"))

    for _ in range(connections):
        _, conn = await loop.create_connection(lambda: _Connection(on_answer, on_lost), "127.0.0.1", port)
        idle.append(conn)
    start = time.perf_counter()
    for i in range(total):
        due = start + i / rate
        wait = due - time.perf_counter()
        if wait > 0.0005:
            await asyncio.sleep(wait)
        if idle:
            idle.pop().send(request(i), due)
        else:
            backlog.append((i, due))
            results.max_backlog = max(results.max_backlog, len(backlog))
    await asyncio.wait_for(finished, 60)
    results.elapsed_s = time.perf_counter() - start
    for conn in idle:
        if conn.transport is not None:
            conn.transport.close()
    return results
