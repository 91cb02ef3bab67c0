"""SSE generators: snapshot first, then every change, resumable by Last-Event-ID."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable

from sse_starlette import ServerSentEvent

from services.notifier.state import PackState, Store

Allowed = Callable[[], bool]


def _always() -> bool:
    return True


def revoked() -> ServerSentEvent:
    return ServerSentEvent(json.dumps({"reason": "API key revoked"}), event="revoked")


async def pack_events(pack: PackState, last_event_id: str | None, allowed: Allowed = _always) -> AsyncIterator[ServerSentEvent]:
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


async def user_events(store: Store, user_id: str, allowed: Allowed = _always) -> AsyncIterator[ServerSentEvent]:
    """All of a user's packs: a snapshot of each, then their changes. Ids are
    `<pack_id>:<seq>`; this stream starts fresh on reconnect (see README)."""
    sent: dict[str, int] = {}
    for pack_id in sorted(store.by_user.get(user_id, ())):
        pack = store.packs[pack_id]
        sent[pack_id] = pack.seq
        yield ServerSentEvent(json.dumps(pack.snapshot(), default=str), event="pack", id=f"{pack_id}:{pack.seq}")
    while True:
        changed = store.user_event(user_id)
        if not allowed():
            yield revoked()
            return
        for pack_id in sorted(store.by_user.get(user_id, ())):
            pack = store.packs[pack_id]
            last = sent.get(pack_id, 0)
            for r in pack.after(last) or ():
                yield ServerSentEvent(r.data, event=r.event, id=f"{pack_id}:{r.seq}")
            sent[pack_id] = pack.seq
        await changed.wait()


def _parse(value: str | None) -> int | None:
    if value is None or not value.strip():
        return None
    try:
        return int(value.strip())
    except ValueError:
        return -1  # never resumable: the client gets a snapshot and a resync

