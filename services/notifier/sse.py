"""The notifier's Server-Sent Events responses, made to hold thousands of streams in one
process. A stream is one task, the request's own: it writes what its generator yields
and, between changes, waits on one future that any of these resolves: its pack's or
user's signal (one call per change for all the streams waiting on it), the keep-alive
clock, its client's disconnect (a small task per stream waits for it), the server's stop.
Frames are encoded once per event and shared (`frames.py`); nothing is queued per stream.
A stream waiting with nothing unsent is not even woken for a change: the change's frames
are written to its connection at once, by the code that applied it (`DirectWrite`).

One `Hub` task per process keeps the clock: every tick it pings the streams that wrote
nothing for `ping_s`, ends every stream when the server is asked to stop, and cuts off a
client that has not taken a write for `send_timeout_s` (its socket buffers are full: it
stopped reading). A slow client holds back nobody else: each stream reads the shared
history at its own pace, and one that fell behind the history kept gets a snapshot and a
`resync` (`streams.py`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing

from prometheus_client import Gauge
from sse_starlette.sse import AppStatus  # its hook on uvicorn's exit: set when the server is asked to stop
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from services.notifier.direct import DIRECT_WRITES, DirectWrite
from services.notifier.frames import PING, Frame
from services.notifier.streams import Take, Wait
from services.notifier.wake import Signal, Waiter, Wake

log = logging.getLogger("packline.notifier.sse")
SUBSCRIBERS = Gauge("packline_sse_subscribers", "open SSE connections")
Frames = Callable[[Wait], AsyncGenerator[Frame, None]]


class Ended(Exception):
    """Raised where a stream waits: its client left, or the server is stopping."""

    def __init__(self, reason: Wake) -> None:
        super().__init__(reason.value)
        self.reason = reason


class Stream:
    __slots__ = ("cut", "direct", "ended", "last_write", "loop", "send", "sending_since", "take", "task", "waiter",
                 "waiting")

    def __init__(self, send: Send, task: asyncio.Task[object]) -> None:
        self.send, self.task, self.waiter = send, task, Waiter()
        self.direct = DirectWrite.of(send)
        self.take: Take | None = None  # what the generator waiting now offers (streams.Take)
        if self.direct is not None:
            self.waiter.on_change = self._take
        self.loop = asyncio.get_running_loop()
        self.last_write, self.sending_since = self.loop.time(), 0.0  # 0: no write under way
        self.waiting = False
        self.ended: Wake | None = None
        self.cut = False

    async def write(self, data: bytes) -> None:
        self.sending_since = self.loop.time()
        await self.send({"type": "http.response.body", "body": data, "more_body": True})
        self.sending_since = 0.0
        self.last_write = self.loop.time()

    async def wait(self, changed: Signal, take: Take) -> None:
        """Until `changed` brings what the stream's generator must see, sending pings
        meanwhile; raises `Ended`. The frames `take` gives while the stream waits are
        written at once, without waking this task (see DirectWrite)."""
        self.take = take
        try:
            while self.ended is None:
                self.waiting = True
                try:
                    reason = await self.waiter.until(changed)
                finally:
                    self.waiting = False
                if reason is Wake.CHANGED:
                    return
                if reason is Wake.PING:
                    await self.write(PING)
            raise Ended(self.ended)
        finally:
            self.take = None

    def _take(self) -> bool:
        """A change while waiting: True when its frames went out here (the task sleeps on)."""
        direct, take = self.direct, self.take
        if not self.waiting or take is None or self.ended is not None or direct is None or not direct.ready():
            return False
        try:
            due = take()
            if due is None:
                return False
            data, then = due
            if data:
                direct.write(data)
                self.last_write = self.loop.time()
                DIRECT_WRITES.count += 1
        except Exception:  # runs inside the code applying a change: never let one stream break it
            log.exception("a direct write failed; this stream's task writes from now on")
            self.direct = None
            return False
        if then is None:  # the stream ends with these: the task finishes the response
            return False
        self.waiter.follow(then)
        return True

    def end(self, reason: Wake) -> None:
        if self.ended is None:
            self.ended = reason
        self.waiter.wake(reason)

    def cut_off(self) -> None:
        if not self.cut:
            self.cut = True
            self.task.cancel()


class Hub:
    """The open streams of this process, and the one task that keeps their clock."""

    def __init__(self, ping_s: float, send_timeout_s: float = 30.0) -> None:
        self.ping_s, self.send_timeout_s = ping_s, send_timeout_s
        self.tick_s = max(0.01, min(1.0, ping_s / 4, send_timeout_s / 4))
        self.streams: set[Stream] = set()
        self.cut = 0  # clients cut off for not reading, since start
        self._clock: asyncio.Task[None] | None = None

    def add(self, stream: Stream) -> None:
        self.streams.add(stream)
        if self._clock is None or self._clock.done():
            self._clock = asyncio.create_task(self._tick(), name="notifier-sse-clock")

    async def stop(self) -> None:
        if self._clock is not None:
            self._clock.cancel()
            await asyncio.gather(self._clock, return_exceptions=True)

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.tick_s)
            now, closing = loop.time(), AppStatus.should_exit
            for stream in self.streams:
                if closing:
                    stream.end(Wake.CLOSING)
                elif stream.sending_since and now - stream.sending_since >= self.send_timeout_s:
                    self.cut += not stream.cut
                    stream.cut_off()
                elif stream.waiting and now - stream.last_write >= self.ping_s:
                    stream.waiter.wake(Wake.PING)


class EventStream(Response):
    """`text/event-stream`, the headers sse-starlette sent (no caching, no proxy buffering)."""

    media_type = "text/event-stream"

    def __init__(self, frames: Frames, hub: Hub) -> None:
        self.frames, self.hub = frames, hub
        self.status_code, self.background = 200, None
        self.init_headers({"Cache-Control": "no-store", "Connection": "keep-alive", "X-Accel-Buffering": "no"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        if scope["method"] == "HEAD":  # headers only: the stream never ends, a HEAD must
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        task = asyncio.current_task()
        assert task is not None
        stream = Stream(send, task)
        listener = asyncio.ensure_future(_disconnect(receive))
        listener.add_done_callback(lambda _: stream.end(Wake.GONE))
        self.hub.add(stream)
        SUBSCRIBERS.inc()
        try:
            async with aclosing(self.frames(stream.wait)) as frames:
                async for frame in frames:
                    await stream.write(frame.encoded)
        except Ended as exc:
            if exc.reason is Wake.GONE:
                return  # nobody to finish the response for
        except asyncio.CancelledError:
            if not stream.cut:
                raise
            task.uncancel()
            log.warning("cut off an SSE client that took nothing for %.0f s (it stopped reading)", self.hub.send_timeout_s)
            return  # the response is unfinished: the server closes the connection
        finally:
            SUBSCRIBERS.dec()
            self.hub.streams.discard(stream)
            listener.cancel()
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
