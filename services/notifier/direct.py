"""Writing a waiting stream's frames straight to its connection (see `sse.Stream`), and
the count of writes made so."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily
from starlette.types import Send


class DirectWrite:
    """Writes a waiting stream's frames straight to its connection, from the code that
    applied the change: no task wakes, and the write passes through no ASGI layer (with
    thousands of streams that took a delivery's CPU down by a third). Only where it is known to be
    safe: the server is uvicorn's httptools protocol (found by its attributes), the response
    is chunked and not finished, the client is connected, and nothing waits in the
    socket's buffer. Otherwise, and for every other server, the stream's task writes
    through ASGI's `send` as always, with the server's flow control."""

    __slots__ = ("cycle", "transport")

    def __init__(self, cycle: Any, transport: Any) -> None:
        self.cycle, self.transport = cycle, transport

    @classmethod
    def of(cls, send: Send) -> DirectWrite | None:
        """For a response already started with `send`."""
        cycle = getattr(send, "__self__", None)
        transport = getattr(cycle, "transport", None)
        if getattr(cycle, "chunked_encoding", None) is not True or getattr(cycle, "response_complete", True) \
                or not hasattr(cycle, "disconnected") or not hasattr(transport, "get_write_buffer_size"):
            return None
        return cls(cycle, transport)

    def ready(self) -> bool:
        """Not when the client left, or reads slowly: the server's flow control decides then."""
        return not (self.cycle.disconnected or self.transport.get_write_buffer_size())

    def write(self, data: bytes) -> None:
        last, chunk = DirectWrite._last
        if data is not last:  # a pack's streams are written one after another with the same bytes
            chunk = b"%x\r\n%b\r\n" % (len(data), data)  # one chunk, as uvicorn frames a body
            DirectWrite._last = (data, chunk)
        self.transport.write(chunk)

    _last: tuple[bytes, bytes] = (b"", b"")


class _DirectWrites:
    """packline_sse_direct_writes_total: a plain count on the hot path (no lock per write),
    read when /metrics is scraped."""

    count = 0

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily("packline_sse_direct_writes", "SSE writes made by the change itself, no stream task woken",
                                  value=self.count)


DIRECT_WRITES = _DirectWrites()
REGISTRY.register(DIRECT_WRITES)
