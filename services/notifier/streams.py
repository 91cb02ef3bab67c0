"""SSE generators: snapshot first, then every change, resumable by Last-Event-ID."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable

from sse_starlette import ServerSentEvent

from services.notifier.state import Cursor, PackView, Rendered, Store

Allowed = Callable[[], bool]


def _always() -> bool:
    return True


def revoked() -> ServerSentEvent:
    return ServerSentEvent(json.dumps({"reason": "API key revoked"}), event="revoked")


async def pack_events(pack: PackView, last_event_id: str | None, allowed: Allowed = _always) -> AsyncIterator[ServerSentEvent]:
    """`allowed` is asked after every wake-up: a revocation wakes the user's streams."""
    last = _parse(last_event_id)
    if last is None or pack.after(last) is None:
        # No id, or one that cannot be resumed (unknown, or older than the kept history).
        yield ServerSentEvent(json.dumps(pack.snapshot(), default=str), event="pack", id=str(pack.seq))
        if last is not None:
            resync = {"pack_id": pack.pack_id, "reason": f"cannot resume after id {last_event_id!r}"}
            yield ServerSentEvent(json.dumps(resync), event="resync", id=str(pack.seq))
        last = pack.seq
    while True:
        changed = pack.changed  # taken before reading, so no change can slip between read and wait
        if not allowed():
            yield revoked()
            return
        for r in pack.after(last) or ():
            yield ServerSentEvent(r.data, event=r.event, id=str(r.seq))
            last = r.seq
        if pack.terminal and last >= pack.seq:
            return
        await changed.wait()


async def user_events(
    store: Store, user_id: str, last_event_id: str | None, allowed: Allowed = _always,
) -> AsyncIterator[ServerSentEvent]:
    """All of a user's packs. Each id is a cursor (positions in packs.status, the same on
    every notifier instance): resuming with it gives every later event, in log order, with
    no gap and no duplicate. Without one, or with one that cannot be resumed (unreadable,
    or older than a pack's kept history), the affected packs get a snapshot, and a
    `resync` event says so."""
    cursor = parse_cursor(last_event_id)
    covered: dict[str, int] = {}  # pack -> position its snapshot already covers
    packs = sorted(store.by_user.get(user_id, ()))
    if cursor is None:
        cursor, stale = store.cursor(), packs
    else:
        stale = [p for p in packs if store.packs[p].trimmed > cursor.get(store.packs[p].partition, -1)]
    for pack_id in stale:
        pack = store.packs[pack_id]
        covered[pack_id] = pack.history[-1].position if pack.history else -1
        yield ServerSentEvent(json.dumps(pack.snapshot(), default=str), event="pack", id=format_cursor(cursor))
    if last_event_id is not None and stale:
        resync = {"packs": stale, "reason": f"cannot resume after id {last_event_id!r}"}
        yield ServerSentEvent(json.dumps(resync), event="resync", id=format_cursor(cursor))
    while True:
        changed = store.user_event(user_id)
        if not allowed():
            yield revoked()
            return
        fresh: list[Rendered] = []
        for pack_id in store.by_user.get(user_id, ()):
            pack = store.packs[pack_id]
            after = max(cursor.get(pack.partition, -1), covered.get(pack_id, -1))
            for r in reversed(pack.history):
                if r.position <= after:
                    break
                fresh.append(r)
        for r in sorted(fresh, key=lambda r: (r.partition, r.position)):
            cursor[r.partition] = r.position
            yield ServerSentEvent(r.data, event=r.event, id=format_cursor(cursor))
        await changed.wait()


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

