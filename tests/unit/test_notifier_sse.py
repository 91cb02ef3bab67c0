"""The notifier's SSE streams on the wire: frames encoded once and shared, each with its
own stream's id; pings; a client that stops reading holds back nobody and is cut off;
a stream that fell behind the kept history resyncs. Real HTTP: uvicorn on a socket."""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import cast

from prometheus_client import REGISTRY
from sse_starlette import ServerSentEvent
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from services.notifier import streams
from services.notifier.direct import DirectWrite
from services.notifier.frames import Frame
from services.notifier.sse import EventStream, Hub, Stream
from services.notifier.state import Store
from services.notifier.wake import Signal
from shared.devbroker import free_port
from shared.events import ImageEntry, ImageStatus, PackStatus
from tests.harness import serving as serving_app

PACK = uuid.uuid4()


def status(s: str, eid: str, pack: uuid.UUID = PACK) -> PackStatus:
    return PackStatus(event_id=eid, pack_id=pack, user_id="alice", status=s, cost=2,
                      images=[ImageEntry(image_id="main", kind="main")])


def image(n: int, error: str = "") -> ImageStatus:
    entry = ImageEntry(image_id="main", kind="main", status="GENERATING", attempts=n, error=error or None)
    return ImageStatus(event_id=f"i{n}", pack_id=PACK, user_id="alice", image=entry)


def feed(store: Store, events: list[PackStatus | ImageStatus], offset: int = 0) -> None:
    for i, ev in enumerate(events):
        store.at(0, offset + i)
        store.apply(ev)


async def test_subscribers_share_one_encoding_and_each_get_their_own_id() -> None:
    store = Store(history_limit=100)
    feed(store, [status("PROCESSING", "a")])
    pack = store.packs[str(PACK)]
    first = streams.pack_events(pack, "1")
    second = streams.user_events(store, "alice", "c0:0")
    later = streams.user_events(store, "alice", None)
    assert [f.event async for f in _take(later, 1)] == ["pack"]  # its opening snapshot
    feed(store, [image(1)], offset=1)
    got = [(await anext(first)), (await anext(second)), (await anext(later))]
    shared = pack.history[-1].body
    assert [f.id for f in got] == ["2", "c0:2", "c0:2"]
    for f in got:
        assert f.encoded == f"id: {f.id}\r\n".encode() + shared  # the event's lines, encoded once
        # Byte for byte what sse-starlette wrote for the same event.
        assert f.encoded == ServerSentEvent(f.data, event=f.event, id=f.id).encode()
    assert json.loads(got[0].data)["seq"] == 2
    revoked = streams.revoked()
    assert revoked.id is None and not revoked.encoded.startswith(b"id:")  # keeps the client's last id


async def test_a_stream_that_fell_behind_the_kept_history_gets_a_snapshot_and_a_resync() -> None:
    store = Store(history_limit=2)
    feed(store, [status("PROCESSING", "a")])
    pack = store.packs[str(PACK)]
    stream = streams.pack_events(pack, None)
    assert (await anext(stream)).event == "pack"
    waiting = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0)  # it waits for a change
    feed(store, [image(n) for n in range(1, 5)], offset=1)  # more than the window, before it runs
    behind = [await waiting, await anext(stream)]
    assert [f.event for f in behind] == ["pack", "resync"] and behind[0].id == "5"
    assert json.loads(behind[0].data)["images"][0]["attempts"] == 4
    feed(store, [image(5)], offset=5)
    assert (await anext(stream)).id == "6"  # and it goes on from there, with no gap


async def _take(stream: AsyncIterator[Frame], n: int) -> AsyncIterator[Frame]:
    for _ in range(n):
        yield await anext(stream)


# --- over HTTP ------------------------------------------------------------------------


@asynccontextmanager
async def serving(store: Store, hub: Hub, allowed: streams.Allowed = streams.always, bare: bool = False) -> AsyncIterator[int]:
    """The pack's stream behind a route, or `bare`: right under the server as the notifier's
    fast path serves it, with the server's own `send` (routing wraps it, and then the
    stream's task writes every frame)."""
    def stream() -> EventStream:
        return EventStream(partial(streams.pack_events, store.packs[str(PACK)], None, allowed), hub)

    async def routed(request: Request) -> EventStream:
        return stream()

    async def under_the_server(scope: Scope, receive: Receive, send: Send) -> None:
        await stream()(scope, receive, send)

    port = free_port()
    app = under_the_server if bare else Starlette(routes=[Route("/events", routed)])
    try:
        async with serving_app(app, port, log_level="critical"):
            yield port
    finally:
        await hub.stop()


async def open_stream(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 22)
    writer.write(REQUEST)
    await reader.readuntil(b"\r\n\r\n")  # the response head
    return reader, writer


async def open_stalled(port: int) -> socket.socket:
    """A client that sends its request and then reads nothing (no reader on the loop)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", port))
    await loop.sock_sendall(sock, REQUEST)
    return sock


REQUEST = b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n"


async def read_events(reader: asyncio.StreamReader, until_id: str) -> list[str]:
    """The ids of the events read, up to `until_id`; comments (pings) are skipped."""
    ids: list[str] = []
    while until_id not in ids:
        line = await asyncio.wait_for(reader.readline(), 20)
        assert line, "the stream ended"
        if line.startswith(b"id: "):
            ids.append(line[4:].strip().decode())
    return ids


async def test_a_client_that_stops_reading_holds_back_nobody_and_is_cut_off() -> None:
    store = Store(history_limit=1000)
    feed(store, [status("PROCESSING", "a")])
    hub = Hub(ping_s=60, send_timeout_s=1.0)
    async with serving(store, hub) as port:
        stalled = await open_stalled(port)
        reader, writer = await open_stream(port)
        big = "x" * 50_000  # 10 MB in all: more than the stalled client's socket buffers take
        for n in range(1, 201):
            feed(store, [image(n, big)], offset=n)
            await asyncio.sleep(0)
        got = await read_events(reader, "201")
        assert got[-1] == "201" and len(got) == 201  # every event, while the other one took none
        for _ in range(200):  # the stalled one: cut off once its write has waited send_timeout_s, then gone
            if hub.cut and len(hub.streams) == 1:
                break
            await asyncio.sleep(0.05)
        assert hub.cut == 1 and len(hub.streams) == 1
        stalled_bytes, loop = b"", asyncio.get_running_loop()
        while chunk := await asyncio.wait_for(loop.sock_recv(stalled, 1 << 20), 20):
            stalled_bytes += chunk
        assert stalled_bytes.count(b"\nid: ") < 200  # it ended without the rest: closed by the server
        stalled.close()
        writer.close()


async def test_idle_streams_get_pings_and_a_client_that_leaves_is_forgotten() -> None:
    store = Store(history_limit=10)
    feed(store, [status("PROCESSING", "a")])
    hub = Hub(ping_s=0.1)
    async with serving(store, hub) as port:
        reader, writer = await open_stream(port)
        assert await read_events(reader, "1") == ["1"]
        assert await asyncio.wait_for(reader.readuntil(b": ping\r\n\r\n"), 20)
        assert len(hub.streams) == 1
        writer.close()
        for _ in range(200):
            if not hub.streams:
                break
            await asyncio.sleep(0.05)
        assert not hub.streams


def test_the_streams_are_in_the_openapi_document_as_event_streams() -> None:
    from services.notifier.app import create_app
    from services.notifier.settings import Settings

    paths = create_app(Settings()).openapi()["paths"]
    for path in ("/v1/events", "/v1/packs/{pack_id}/events"):
        assert "text/event-stream" in paths[path]["get"]["responses"]["200"]["content"]


# --- frames written by the change itself ---------------------------------------------------


def direct_writes() -> float:
    return REGISTRY.get_sample_value("packline_sse_direct_writes_total") or 0.0


async def test_a_waiting_stream_is_written_to_by_the_change_and_its_task_ends_the_response() -> None:
    store = Store(history_limit=100)
    feed(store, [status("PROCESSING", "a")])
    hub = Hub(ping_s=60)
    async with serving(store, hub, bare=True) as port:
        reader, writer = await open_stream(port)
        assert await read_events(reader, "1") == ["1"]
        for _ in range(100):  # until the stream waits
            if any(stream.waiting for stream in hub.streams):
                break
            await asyncio.sleep(0.01)
        before = direct_writes()
        for n in range(1, 4):
            feed(store, [image(n)], offset=n)
            assert await read_events(reader, str(n + 1)) == [str(n + 1)]
        assert direct_writes() - before == 3  # no task woke for these
        feed(store, [status("COMPLETED", "z")], offset=4)
        rest = await asyncio.wait_for(reader.read(), 20)  # to the end of the response
        assert b"id: 5\r\nevent: pack\r\n" in rest and rest.endswith(b"0\r\n\r\n")  # the closing chunk
        assert direct_writes() - before == 4
        writer.close()


async def test_a_revocation_wakes_the_stream_which_says_so_and_ends() -> None:
    store = Store(history_limit=100)
    feed(store, [status("PROCESSING", "a")])
    hub, revoked = Hub(ping_s=60), False
    async with serving(store, hub, lambda: not revoked, bare=True) as port:
        reader, writer = await open_stream(port)
        assert await read_events(reader, "1") == ["1"]
        await asyncio.sleep(0.1)
        before = direct_writes()
        revoked = True
        store.wake_user("alice")
        rest = await asyncio.wait_for(reader.read(), 20)
        assert b"event: revoked\r\n" in rest and rest.endswith(b"0\r\n\r\n") and direct_writes() == before
        writer.close()


class Transport:
    """The parts of uvicorn's transport a direct write uses."""

    def __init__(self) -> None:
        self.buffered, self.written = 0, b""

    def write(self, data: bytes) -> None:
        self.written += data

    def get_write_buffer_size(self) -> int:
        return self.buffered


class Cycle:
    """The parts of uvicorn's httptools request cycle a direct write looks for."""

    chunked_encoding, disconnected, response_complete = True, False, False

    def __init__(self) -> None:
        self.transport = Transport()

    async def send(self, message: object) -> None: ...


def test_frames_are_written_directly_only_to_a_server_known_to_allow_it() -> None:
    async def plain_send(message: object) -> None:
        pass

    assert DirectWrite.of(plain_send) is None  # any other server: the task writes through `send`
    cycle = Cycle()
    direct = DirectWrite.of(cycle.send)
    assert direct is not None and direct.ready()
    cycle.transport.buffered = 10  # a client that reads slowly: the server's flow control decides
    assert not direct.ready()
    cycle.transport.buffered, cycle.disconnected = 0, True
    assert not direct.ready()


async def test_a_direct_write_that_fails_wakes_the_task_which_writes_from_then_on() -> None:
    task = asyncio.current_task()
    assert task is not None
    stream, signal = Stream(Cycle().send, cast(asyncio.Task[object], task)), Signal()

    def broken() -> tuple[bytes, Signal | None]:
        raise RuntimeError("a frame that cannot be made")

    waiting = asyncio.create_task(stream.wait(signal, broken))
    await asyncio.sleep(0.01)
    signal.set()  # the change: its direct write fails, and the stream's task is woken instead
    await asyncio.wait_for(waiting, 5)
    assert stream.direct is None
