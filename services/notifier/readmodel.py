"""The notifier's durable read model: one SQLite file per notifier instance.

It holds every pack ever made: its snapshot (the JSON `GET /v1/packs/{id}` answers), owner,
status, times, SSE sequence number, its partition of `packs.status` and its place there
(the offset of the last record applied, the position of its last event, the offsets of
every record applied, for re-reading its history from Kafka while Kafka still holds it),
and the ids of the events applied (hashed, 8 bytes each) so that a repeated event is
skipped however late it comes. Next to the packs, the feed's checkpoint: per partition,
the next offset to apply. Snapshots and the checkpoint that covers them are written in one
transaction, so a notifier killed at any moment restarts consistent: it reads
`packs.status` from the checkpoint, and re-applying what follows is idempotent.

The file is owned by one notifier instance (`NOTIFIER_DB_PATH`, default
`VAR_DIR/notifier-<port>.db`) and is derived data: deleting it makes the notifier rebuild
it from `packs.status` at its next start (what the topic still holds). WAL mode with
`synchronous=NORMAL`: a killed process loses nothing committed; a power cut may lose the
last transactions, which are then read again from Kafka.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("packline.notifier.readmodel")

SCHEMA_VERSION = "1"
SCHEMA = """
CREATE TABLE IF NOT EXISTS packs (
    pack_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    status TEXT NOT NULL,
    live INTEGER NOT NULL,            -- 1 while the pack is not terminal
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    seq INTEGER NOT NULL,             -- the pack's latest SSE id
    kafka_partition INTEGER NOT NULL, -- its partition of packs.status
    last_offset INTEGER NOT NULL,     -- the offset of the last record applied to it
    last_position INTEGER NOT NULL,   -- the position (offset * 2 + index) of its last event
    snapshot TEXT NOT NULL,           -- JSON, as GET /v1/packs/{id} answers it
    seen BLOB NOT NULL,               -- 8-byte hashes of the event ids applied
    offsets BLOB                      -- offsets of the records applied, in order; NULL: not re-readable
);
CREATE INDEX IF NOT EXISTS packs_by_user ON packs (user_id, pack_id, kafka_partition, last_position);
CREATE INDEX IF NOT EXISTS packs_live ON packs (pack_id) WHERE live = 1;
-- GET /v1/packs: a user's packs, newest first. Created on open when missing: an index adds
-- nothing a file of the same SCHEMA_VERSION lacks, so it is no reason to rebuild one.
CREATE INDEX IF NOT EXISTS packs_by_user_created ON packs (user_id, created_at DESC, pack_id DESC);
CREATE TABLE IF NOT EXISTS checkpoint (
    kafka_partition INTEGER PRIMARY KEY,
    next_offset INTEGER NOT NULL      -- every record before it is applied to the packs above
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
COLUMNS = ("pack_id, user_id, status, live, created_at, updated_at, seq, kafka_partition, last_offset, "
           "last_position, snapshot, seen, offsets")
UPSERT = (
    f"INSERT INTO packs ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (pack_id) DO UPDATE SET user_id = excluded.user_id, status = excluded.status, live = excluded.live, "
    "created_at = excluded.created_at, updated_at = excluded.updated_at, seq = excluded.seq, "
    "kafka_partition = excluded.kafka_partition, last_offset = excluded.last_offset, "
    "last_position = excluded.last_position, snapshot = excluded.snapshot, seen = excluded.seen, offsets = excluded.offsets"
)
CHECKPOINT = ("INSERT INTO checkpoint (kafka_partition, next_offset) VALUES (?, ?) "
              "ON CONFLICT (kafka_partition) DO UPDATE SET next_offset = excluded.next_offset")


@dataclass(frozen=True)
class StoredPack:
    """One row of `packs`, as the store writes and reads it."""

    pack_id: str
    user_id: str
    status: str
    live: bool
    created_at: str
    updated_at: str
    seq: int
    partition: int
    last_offset: int
    last_position: int
    snapshot: str  # JSON
    seen: bytes
    offsets: bytes | None

    def row(self) -> tuple[object, ...]:
        return (self.pack_id, self.user_id, self.status, int(self.live), self.created_at, self.updated_at, self.seq,
                self.partition, self.last_offset, self.last_position, self.snapshot, self.seen, self.offsets)

    @classmethod
    def of(cls, row: Sequence[object]) -> StoredPack:
        (pack_id, user_id, status, live, created_at, updated_at, seq, partition, last_offset, last_position,
         snapshot, seen, offsets) = row
        return cls(str(pack_id), str(user_id), str(status), bool(live), str(created_at), str(updated_at), int(str(seq)),
                   int(str(partition)), int(str(last_offset)), int(str(last_position)), str(snapshot),
                   bytes(seen) if isinstance(seen, bytes | memoryview) else b"",
                   bytes(offsets) if isinstance(offsets, bytes | memoryview) else None)


def pack_ints(values: Iterable[int]) -> bytes:
    return array("q", values).tobytes()


def unpack_ints(blob: bytes) -> list[int]:
    values = array("q")
    values.frombytes(blob)
    return values.tolist()


class ReadModel:
    """The SQLite file. Two connections: a writer, used by one thread at a time (the feed
    writes in a worker thread so that the event loop keeps serving), and a reader for the
    event loop's point lookups (WAL: readers never wait for the writer)."""

    def __init__(self, path: Path, topic: str) -> None:
        self.path, self.topic = Path(path), topic
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._open()
        stored = self.meta("topic")
        if stored is not None and (stored != topic or self.meta("schema") != SCHEMA_VERSION):
            log.warning("%s holds %s (schema %s), not %s: starting it over", self.path, stored, self.meta("schema"), topic)
            self.reset()
        self._set_meta()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA cache_size = -8000")  # 8 MiB per connection, whatever the file's size
        return conn

    def _open(self) -> None:
        self._writer = self._connect()
        self._writer.executescript(SCHEMA)
        self._reader = self._connect()

    def _set_meta(self) -> None:
        with self._transaction():
            self._writer.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                                     [("topic", self.topic), ("schema", SCHEMA_VERSION)])

    def _transaction(self) -> _Commit:
        self._writer.execute("BEGIN IMMEDIATE")
        return _Commit(self._writer)

    def close(self) -> None:
        self._reader.close()
        self._writer.close()

    def reset(self) -> None:
        """Start over with an empty file (another deployment's file, or a topic recreated
        since: its offsets mean nothing here)."""
        self.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)
        self._open()
        self._set_meta()

    def meta(self, key: str) -> str | None:
        row = self._reader.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    # --- writing (the feed, in a worker thread) -------------------------------------
    def write(self, packs: Sequence[StoredPack], checkpoint: dict[int, int]) -> None:
        """The packs changed since the last write and the checkpoint that covers them, in
        one transaction: all of it is on disk, or none."""
        with self._transaction():
            self._writer.executemany(UPSERT, [p.row() for p in packs])
            self._writer.executemany(CHECKPOINT, sorted(checkpoint.items()))

    # --- reading (the event loop) ---------------------------------------------------
    def checkpoint(self) -> dict[int, int]:
        return {int(p): int(o) for p, o in self._reader.execute("SELECT kafka_partition, next_offset FROM checkpoint")}

    def load(self, pack_id: str) -> StoredPack | None:
        row = self._reader.execute(f"SELECT {COLUMNS} FROM packs WHERE pack_id = ?", (pack_id,)).fetchone()
        return None if row is None else StoredPack.of(row)

    def live(self) -> list[StoredPack]:
        """Every pack not yet terminal (bounded by live work, not by history)."""
        return [StoredPack.of(r) for r in self._reader.execute(f"SELECT {COLUMNS} FROM packs WHERE live = 1")]

    def snapshot(self, pack_id: str) -> tuple[str, int, int] | None:
        """(snapshot JSON, partition, position of its last event), without the rest."""
        row = self._reader.execute(
            "SELECT snapshot, kafka_partition, last_position FROM packs WHERE pack_id = ?", (pack_id,),
        ).fetchone()
        return None if row is None else (str(row[0]), int(row[1]), int(row[2]))

    def user_page(self, user_id: str, after: str, limit: int) -> list[str]:
        """The user's pack ids greater than `after`, in order, at most `limit`."""
        rows = self._reader.execute(
            "SELECT pack_id FROM packs WHERE user_id = ? AND pack_id > ? ORDER BY pack_id LIMIT ?", (user_id, after, limit),
        )
        return [str(r[0]) for r in rows]

    def user_newest(self, user_id: str, before: tuple[str, str] | None, status: str | None, limit: int) -> list[tuple[str, str, str]]:
        """The user's packs older than `before` (created_at, pack_id), of `status` if given,
        newest first, at most `limit`: (created_at, pack_id, snapshot JSON)."""
        where, params = "user_id = ?", [user_id]
        if before is not None:
            where += " AND (created_at, pack_id) < (?, ?)"
            params += [before[0], before[1]]
        if status is not None:
            where += " AND status = ?"
            params.append(status)
        rows = self._reader.execute(
            f"SELECT created_at, pack_id, snapshot FROM packs WHERE {where} "
            "ORDER BY created_at DESC, pack_id DESC LIMIT ?", [*params, limit],
        )
        return [(str(r[0]), str(r[1]), str(r[2])) for r in rows]

    def user_changed_after(self, user_id: str, cursor: dict[int, int]) -> list[str]:
        """The user's packs with an event past `cursor` (partition -> last position seen;
        a partition it does not name: nothing seen there), in order."""
        params: list[object] = [user_id]
        cases = ""
        for partition, position in sorted(cursor.items()):
            cases += " WHEN ? THEN ?"
            params += [partition, position]
        bound = f"CASE kafka_partition{cases} ELSE -1 END" if cases else "-1"
        rows = self._reader.execute(
            f"SELECT pack_id FROM packs WHERE user_id = ? AND last_position > {bound} ORDER BY pack_id", params,
        )
        return [str(r[0]) for r in rows]

    def count(self) -> int:
        return int(self._reader.execute("SELECT count(*) FROM packs").fetchone()[0])


class _Commit:
    """`with model._transaction():` commits on success, rolls back on error."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        return self.conn

    def __exit__(self, kind: object, *_: object) -> None:
        self.conn.execute("COMMIT" if kind is None else "ROLLBACK")


def snapshot_json(snapshot: dict[str, object]) -> str:
    """The one rendering of a snapshot, in memory and in the file alike."""
    return json.dumps(snapshot, default=str)
