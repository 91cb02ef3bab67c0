"""The pieces of a seller's reads without a broker: the pack listing merges memory with the
read model (memory's word wins), cursors refuse what they did not make, statements apply
each change once, and user stream tokens are neither pack tokens nor API keys."""

from __future__ import annotations

import io
import uuid
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from services.api.reads import _Sink, _zip
from services.notifier import listing
from services.notifier.readmodel import ReadModel
from services.notifier.state import Store
from services.notifier.statement import Statements, entry_of
from shared.auth import AuthError, make_stream_token, make_user_stream_token, verify_stream_token, verify_user_stream_token
from shared.events import CreditsChanged, MoneyReason, PackState, PackStatus
from shared.images import LocalImageStore

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def status(pack: uuid.UUID, user: str, state: str, at: datetime, n: int) -> PackStatus:
    return PackStatus(event_id=f"{pack}-{n}", pack_id=pack, user_id=user, status=state, cost=1, occurred_at=at)


def store_with(tmp_path: Path, packs: int, user: str = "alice") -> tuple[Store, list[str]]:
    """`packs` packs of `user` (one a second), every other one FAILED, all written to the
    read model and dropped from memory; ids oldest first."""
    model = ReadModel(tmp_path / "rm.db", "packs.status")
    store = Store(10, model, cache_packs=0)
    ids, offset = [], 0
    for i in range(packs):
        pack = uuid.UUID(int=i + 1)
        ids.append(str(pack))
        for n, state in enumerate(("DRAFT", "FAILED" if i % 2 else "COMPLETED")):
            store.at(0, offset)
            offset += 1
            store.apply(status(pack, user, state, T0 + timedelta(seconds=i, milliseconds=n), n))
    rows, checkpoint = store.take_changes()
    model.write(rows, checkpoint)
    store.evict()
    return store, ids


def pages(store: Store, user: str, state: PackState | None, limit: int) -> list[list[str]]:
    out, before = [], None
    while True:
        snaps, after = listing.page(store, user, state, before, limit)
        out.append([listing_id(s) for s in snaps])
        if after is None:
            return out
        before = listing.decode_cursor(listing.encode_cursor(after))


def listed(store: Store, user: str, state: PackState | None, limit: int) -> list[str]:
    return [pack_id for page in pages(store, user, state, limit) for pack_id in page]


def listing_id(snapshot: str) -> str:
    return snapshot.split('"pack_id": "')[1].split('"')[0]


def test_pages_come_from_the_read_model_newest_first(tmp_path: Path) -> None:
    store, ids = store_with(tmp_path, 7)
    assert not store.packs  # all of them from the file
    assert pages(store, "alice", None, 3) == [ids[::-1][:3], ids[::-1][3:6], ids[::-1][6:]]
    assert listed(store, "alice", PackState.FAILED, 2) == [ids[5], ids[3], ids[1]]
    assert pages(store, "bob", None, 3) == [[]]


def test_memory_is_newer_than_the_file_and_unwritten_packs_are_listed(tmp_path: Path) -> None:
    store, ids = store_with(tmp_path, 4)
    # A finished pack reopened in memory (its file row still says FAILED) and a new DRAFT not written yet.
    store.at(0, 100)
    store.apply(status(uuid.UUID(ids[1]), "alice", "PROCESSING", T0 + timedelta(minutes=1), 9))
    fresh = uuid.UUID(int=99)
    store.at(0, 101)
    store.apply(status(fresh, "alice", "DRAFT", T0 + timedelta(minutes=2), 0))
    assert listed(store, "alice", None, 2) == [str(fresh), ids[3], ids[2], ids[1], ids[0]]
    assert listed(store, "alice", PackState.FAILED, 1) == [ids[3]]  # not ids[1]: memory says PROCESSING
    assert listed(store, "alice", PackState.PROCESSING, 1) == [ids[1]]


@pytest.mark.parametrize("bad", ["", "x", "bm90IGEgY3Vyc29y", "!!!", listing.encode_cursor(("yesterday", "p"))])
def test_a_cursor_not_made_here_is_refused(bad: str) -> None:
    with pytest.raises(listing.BadCursor):
        listing.decode_cursor(bad)


def changed(user: str, reason: MoneyReason, amount: int, balance: int, event_id: str) -> CreditsChanged:
    return CreditsChanged(event_id=event_id, user_id=user, reason=reason, amount=amount, balance=balance)


def test_statements_apply_each_change_once(tmp_path: Path) -> None:
    book = Statements(tmp_path / "s.db", "credits.events")
    events = [changed("alice", "account_created", 10, 10, "a"), changed("alice", "debited", -3, 7, "b"),
              changed("alice", "refunded", 1, 8, "c"), changed("bob", "granted", 5, 5, "d")]
    assert book.write([entry_of(e) for e in events[:3]], {0: 3}) == 3
    # Sent again after a crash (same ids), then the next one.
    assert book.write([entry_of(e) for e in events], {0: 4}) == 1
    assert book.balance("alice") == 8 and book.balance("bob") == 5 and book.balance("carol") is None
    rows = book.entries("alice", None, 10)
    assert [(r["kind"], r["amount"]) for _, r in rows] == [("refund", 1), ("debit", -3), ("grant", 10)]
    assert [r["kind"] for _, r in book.entries("alice", rows[0][0], 10)] == ["debit", "grant"]
    assert book.checkpoint() == {0: 4}
    book.close()
    assert Statements(tmp_path / "s.db", "credits.events").balance("alice") == 8  # durable
    assert Statements(tmp_path / "s.db", "other.topic").balance("alice") is None  # another topic's file: rebuilt


def test_user_stream_tokens_are_their_own_kind() -> None:
    token, expires = make_user_stream_token("s", "alice", 60, generation=2, key_id="key_0123456789abcdef")
    claims = verify_user_stream_token(("s",), token)
    assert (claims.user_id, claims.generation, claims.key_id, claims.pack_id) == ("alice", 2, "key_0123456789abcdef", "")
    with pytest.raises(AuthError, match="expired"):
        verify_user_stream_token("s", token, now=expires + 1)
    with pytest.raises(AuthError):
        verify_user_stream_token("other secret", token)
    with pytest.raises(AuthError):
        verify_stream_token("s", token, "")  # not a pack's token
    with pytest.raises(AuthError):
        verify_user_stream_token("s", make_stream_token("s", "alice", "p", 60))


async def test_the_zip_streams_what_the_store_holds(tmp_path: Path) -> None:
    store = LocalImageStore(tmp_path, "http://api")
    pack = str(uuid.uuid4())
    await store.save(pack, "main", "alice", b"\x89PNG main" * 1000, 1)
    await store.save(pack, "detail", "alice", b"\x89PNG detail", 2)
    (tmp_path / pack / "lifestyle.png").write_bytes(b"half written, no marker")
    assert await store.delivered(pack) == ["detail", "main"] and await store.owner(pack) == "alice"
    body = b"".join([chunk async for chunk in _zip(store, pack, "alice", await store.delivered(pack))])
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        assert archive.testzip() is None
        assert {n: archive.read(n) for n in archive.namelist()} == {"main.png": b"\x89PNG main" * 1000,
                                                                     "detail.png": b"\x89PNG detail"}
    assert not _Sink().seekable()
