"""`GET /v1/packs`: a user's packs, newest first, page by page.

Two places hold packs: memory (every live pack, the finished ones cached, and any change
not yet written) and the read model (every pack, as of its last write). Memory is the
newer word on every pack it holds, so a page is the merge of the user's packs in memory
and the read model's rows of the packs memory does not hold: a pack posted a moment ago
is listed as soon as the notifier has read its DRAFT, before any write.

The cursor is opaque to clients: base64url of `created_at pack_id` of the last pack
given (a keyset: a page is the same whatever is written meanwhile, and new packs never
shift later pages)."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime

from services.notifier.readmodel import snapshot_json
from services.notifier.state import Store
from shared.events import PackState

Key = tuple[str, str]  # (created_at as the snapshot writes it, pack_id): the order, newest first
DEFAULT_LIMIT, MAX_LIMIT = 20, 100


class BadCursor(ValueError):
    pass


def encode_cursor(key: Key) -> str:
    return base64.urlsafe_b64encode(f"{key[0]} {key[1]}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> Key:
    """The key a cursor names; BadCursor when it is not one this service made."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created_at, pack_id = text.split(" ")
        datetime.fromisoformat(created_at)
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise BadCursor("cursor is not one this service gave; start again without it") from exc
    if not pack_id or len(pack_id) > 100:
        raise BadCursor("cursor is not one this service gave; start again without it")
    return created_at, pack_id


def page(store: Store, user_id: str, status: PackState | None, before: Key | None, limit: int) -> tuple[list[str], Key | None]:
    """Up to `limit` snapshots (JSON) of the user's packs older than `before`, newest
    first, and the cursor key of the next page (None: this is the last one)."""
    found: list[tuple[Key, str]] = []
    in_memory = set()
    for pack_id in store.by_user.get(user_id, ()):
        pack = store.packs[pack_id]
        in_memory.add(pack_id)
        key = (pack.created_at.isoformat(), pack_id)
        if (status is None or pack.status == status) and (before is None or key < before):
            found.append((key, snapshot_json(pack.snapshot())))
    if store.model is not None:
        # The read model's rows of packs memory does not hold, until limit + 1 of them (one
        # more than a page: whether there is a next page). Rows of packs in memory are
        # skipped: memory's status may differ, so more rows are asked for past them.
        after, wanted, taken = before, limit + 1, 0
        while taken < wanted:
            rows = store.model.user_newest(user_id, after, None if status is None else status.value, wanted)
            for created_at, pack_id, snapshot in rows:
                if pack_id not in in_memory:
                    found.append(((created_at, pack_id), snapshot))
                    taken += 1
            if len(rows) < wanted:
                break
            after = (rows[-1][0], rows[-1][1])
    found.sort(key=lambda item: item[0], reverse=True)
    shown = found[:limit]
    more = len(found) > limit and bool(shown)
    return [snapshot for _, snapshot in shown], shown[-1][0] if more else None
