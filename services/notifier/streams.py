"""SSE generators: snapshot first, then every change, resumable by Last-Event-ID."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Awaitable, Callable

from services.notifier.frames import Frame
from services.notifier.state import Cursor, PackView, Rendered, Store
from services.notifier.wake import Signal

Allowed = Callable[[], bool]
# What a waiting stream may be sent at once when its signal fires, without its generator
# running: the frames due, encoded (and the signal to follow next, None when the stream
# ends with them); None when the generator must look itself (a revocation, a resync).
Take = Callable[[], "tuple[bytes, Signal | None] | None"]
# How a stream waits for its next change: the HTTP response passes one that also sends
# keep-alive pings meanwhile, ends the stream when the client leaves, and may use `take`.
Wait = Callable[[Signal, Take], Awaitable[None]]


def always() -> bool:
    return True


def _wait(signal: Signal, _take: Take) -> Awaitable[None]:
    return signal.wait()


def revoked() -> Frame:
    return Frame.of("revoked", json.dumps({"reason": "API key revoked"}), None)


async def pack_events(
    pack: PackView, last_event_id: str | None, allowed: Allowed = always, wait: Wait = _wait,
) -> AsyncGenerator[Frame, None]:
    """`allowed` is asked after every wake-up: a revocation wakes the user's streams. A
    client that read so slowly that the pack's kept history moved past it gets the
    snapshot and a `resync`, as a resume from too old an id would (never a silent gap)."""
    asked = _parse(last_event_id)
    if asked is not None and 0 <= asked < pack.seq and pack.after(asked) is None and pack.source is not None:
        # Memory no longer holds those events (a pack read from the read model, or applied
        # while catching up at start): re-read them from Kafka if it still has them.
        await pack.source.restore(pack)
    last = pack.seq  # the last sequence number sent: once resumed, or what the snapshot covers
    if asked is not None and pack.after(asked) is not None:
        last = asked
    else:  # no id, or one that cannot be resumed (unknown, or older than the kept history)
        for frame in _resync(pack, asked, repr(last_event_id)):
            yield frame

    def take() -> tuple[bytes, Signal | None] | None:
        nonlocal last
        fresh = pack.after(last) if allowed() else None
        if fresh is None:
            return None
        if not fresh:
            return b"", pack.changed
        data = fresh[0].pack_frame() if len(fresh) == 1 else b"".join(r.pack_frame() for r in fresh)
        last = fresh[-1].seq
        return data, None if _ends(pack, last) else pack.changed

    while True:
        changed = pack.changed  # taken before reading, so no change can slip between read and wait
        if not allowed():
            yield revoked()
            return
        fresh = pack.after(last)
        if fresh is None:  # fell behind the kept history while its client was not reading
            frames, last, fresh = _resync(pack, last, f"{last} (history moved on)"), pack.seq, []
            for frame in frames:
                yield frame
        for r in fresh:
            yield Frame(str(r.seq), r.event, r.pack_frame())
            last = r.seq
        if _ends(pack, last):
            return
        await wait(changed, take)


def _ends(pack: PackView, last: int) -> bool:
    return pack.terminal and last >= pack.seq


def _resync(pack: PackView, last: int | None, after: str) -> list[Frame]:
    frames = [Frame.of("pack", json.dumps(pack.snapshot(), default=str), str(pack.seq))]
    if last is not None:
        resync = {"pack_id": pack.pack_id, "reason": f"cannot resume after id {after}"}
        frames.append(Frame.of("resync", json.dumps(resync), str(pack.seq)))
    return frames


async def user_events(
    store: Store, user_id: str, last_event_id: str | None, allowed: Allowed = always, wait: Wait = _wait,
) -> AsyncGenerator[Frame, None]:
    """All of a user's packs. Each id is a cursor (positions in packs.status, the same on
    every notifier instance): resuming with it gives every later event, in log order, with
    no gap and no duplicate. Without one, or with one that cannot be resumed (unreadable,
    or older than a pack's history that memory holds or Kafka still has), the affected
    packs get a snapshot, and a `resync` event says so. Packs come from memory and from
    the read model alike, so a pack made a year ago is still in the opening snapshots."""
    cursor = parse_cursor(last_event_id)
    covered: dict[str, int] = {}  # pack -> position its snapshot already covers
    held: list[PackView] = []  # packs whose history was re-read: their events follow, even if memory lets them go
    stale: list[str] = []
    if cursor is None:
        cursor = store.cursor()
        after = ""
        while page := store.user_page(user_id, after, PAGE):
            for pack_id in page:
                view = store.snapshot_of(pack_id)
                if view is not None:
                    stale.append(pack_id)
                    data, _, covered[pack_id] = view
                    yield Frame.of("pack", data, format_cursor(cursor))
            after = page[-1]
        if last_event_id is None:
            stale = []  # a fresh stream: snapshots, no resync
    else:
        deadline = asyncio.get_running_loop().time() + RESTORE_FOR_S
        for pack_id in store.changed_after(user_id, cursor):
            if len(held) < RESTORE_AT_MOST and asyncio.get_running_loop().time() < deadline:
                if await _restored(store, pack_id, cursor, held):
                    continue
            view = store.snapshot_of(pack_id)
            if view is not None:
                stale.append(pack_id)
                data, _, covered[pack_id] = view
                yield Frame.of("pack", data, format_cursor(cursor))
    if stale:
        resync = {"packs": stale, "reason": f"cannot resume after id {last_event_id!r}"}
        yield Frame.of("resync", json.dumps(resync), format_cursor(cursor))
    looked: int | None = None  # the store's change stamp when this stream last looked; None: look at every pack

    def due() -> list[Frame]:
        """The events after the cursor, in log order, each with the cursor that follows it."""
        nonlocal looked, held
        fresh: list[Rendered] = []
        ids = store.by_user.get(user_id, ()) if looked is None else store.recent.since(user_id, looked)
        looked = store.recent.stamp
        packs = [store.packs[p] for p in ids if p in store.packs]
        packs += [p for p in held if store.packs.get(p.pack_id) is not p]
        held = []
        for pack in packs:
            after_position = max(cursor.get(pack.partition, -1), covered.get(pack.pack_id, -1))
            for r in reversed(pack.history):
                if r.position <= after_position:
                    break
                fresh.append(r)
        frames = []
        for r in sorted(fresh, key=lambda r: (r.partition, r.position)):
            cursor[r.partition] = r.position
            frames.append(Frame.with_id(format_cursor(cursor), r.event, r.body))
        return frames

    def take() -> tuple[bytes, Signal | None] | None:
        return (b"".join(f.encoded for f in due()), store.user_event(user_id)) if allowed() else None

    while True:
        changed = store.user_event(user_id)
        if not allowed():
            yield revoked()
            return
        for frame in due():
            yield frame
        await wait(changed, take)


PAGE = 500  # packs per read-model query for the opening snapshots
RESTORE_AT_MOST = 32  # histories re-read from Kafka per resumed stream; past it (or RESTORE_FOR_S), snapshots
RESTORE_FOR_S = 5.0


async def _restored(store: Store, pack_id: str, cursor: Cursor, held: list[PackView]) -> bool:
    """Whether the pack's history, re-read from Kafka, reaches back to the cursor."""
    pack = store.get(pack_id)
    if pack is None or pack.source is None or not await pack.source.restore(pack):
        return False
    if pack.trimmed > cursor.get(pack.partition, -1):
        return False
    held.append(pack)
    return True


def format_cursor(cursor: Cursor) -> str:
    return "c" + ".".join(f"{p}:{pos}" for p, pos in sorted(cursor.items()) if pos >= 0)


def parse_cursor(value: str | None) -> Cursor | None:
    if not value or not value.startswith("c") or len(value) > 2000:
        return None
    try:
        cursor = {int(p): int(pos) for p, pos in (part.split(":") for part in value[1:].split(".") if part)}
    except ValueError:
        return None
    return cursor if all(p >= 0 and pos >= 0 for p, pos in cursor.items()) else None


def _parse(value: str | None) -> int | None:
    if value is None or not value.strip():
        return None
    try:
        return int(value.strip())
    except ValueError:
        return -1  # never resumable: the client gets a snapshot and a resync

