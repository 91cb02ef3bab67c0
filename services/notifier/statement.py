"""Balances and statements (`GET /v1/balance`, `GET /v1/ledger`), fed by `credits.events`.

`StatementFeed` reads every partition of `credits.events` itself (no consumer group, like
the pack feed) and writes each batch of balance changes with the checkpoint that covers
them in one SQLite transaction, so a notifier killed at any moment restarts consistent and
goes on from the checkpoint. Each change is applied once, by its event id (credits sends a
change again under the same id after a crash): a repeat adds no entry and moves no balance.
A user's changes are all in one partition (keyed by user id), so in order there: the
balance is the one carried by the user's newest change applied.

The file (`NOTIFIER_STATEMENT_DB_PATH`, default next to the read model) is derived data like
the read model: deleting it, or a file of another topic or schema version, rebuilds it from
`credits.events` (what the topic still holds)."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from aiokafka import TopicPartition

from shared.consumer import ConsumerLoop, Record, read_from_start
from shared.errors import InvalidMessage
from shared.events import CreditsChanged, Decoder
from shared.kafka import KafkaConfig
from shared.poison import DeadLetters
from shared.topics import CREDITS_EVENTS

log = logging.getLogger("packline.notifier.statement")

SCHEMA_VERSION = "1"
SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    entry_id INTEGER PRIMARY KEY,     -- order of application: per user, the order of credits.events
    event_id TEXT NOT NULL UNIQUE,
    user_id TEXT NOT NULL,
    kind TEXT NOT NULL,               -- grant | debit | refund | recharge
    amount INTEGER NOT NULL,          -- signed: what it did to the balance
    balance INTEGER NOT NULL,         -- the balance after it
    pack_id TEXT,
    image_id TEXT,
    at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_by_user ON entries (user_id, entry_id DESC);
CREATE TABLE IF NOT EXISTS balances (user_id TEXT PRIMARY KEY, balance INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoint (kafka_partition INTEGER PRIMARY KEY, next_offset INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
# The contract's four kinds. Opening an account is its first grant; a reason added later
# falls to the kind its sign says (money back to the user, or taken): grants have their reason.
KINDS = {"account_created": "grant", "granted": "grant", "debited": "debit", "refunded": "refund", "recharged": "recharge"}
Entry = tuple[str, str, str, int, int, str | None, str | None, str]  # as the entries table, less entry_id


def entry_of(event: CreditsChanged) -> Entry:
    kind = KINDS.get(event.reason) or ("debit" if event.amount < 0 else "refund")
    return (event.event_id, event.user_id, kind, event.amount, event.balance,
            None if event.pack_id is None else str(event.pack_id), event.image_id, event.occurred_at.isoformat())


class Statements:
    """The SQLite file: a writer (the feed's one worker thread) and a reader (the event loop)."""

    def __init__(self, path: Path, topic: str) -> None:
        self.path, self.topic = Path(path), topic
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._open()
        stored = self._meta("topic")
        if stored is not None and (stored != topic or self._meta("schema") != SCHEMA_VERSION):
            log.warning("%s holds %s (schema %s), not %s: starting it over", self.path, stored, self._meta("schema"), topic)
            self.reset()
        self._writer.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                                 [("topic", topic), ("schema", SCHEMA_VERSION)])

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        return conn

    def _open(self) -> None:
        self._writer = self._connect()
        self._writer.executescript(SCHEMA)
        self._reader = self._connect()

    def _meta(self, key: str) -> str | None:
        row = self._reader.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def close(self) -> None:
        self._reader.close()
        self._writer.close()

    def reset(self) -> None:
        self.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)
        self._open()
        self._writer.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                                 [("topic", self.topic), ("schema", SCHEMA_VERSION)])

    def write(self, entries: Sequence[Entry], checkpoint: dict[int, int]) -> int:
        """Apply the entries not applied yet and store the checkpoint, in one transaction;
        how many were new."""
        new = 0
        self._writer.execute("BEGIN IMMEDIATE")
        try:
            for entry in entries:
                cur = self._writer.execute(
                    "INSERT OR IGNORE INTO entries (event_id, user_id, kind, amount, balance, pack_id, image_id, at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", entry,
                )
                if cur.rowcount:
                    new += 1
                    self._writer.execute(
                        "INSERT INTO balances (user_id, balance) VALUES (?, ?) "
                        "ON CONFLICT (user_id) DO UPDATE SET balance = excluded.balance", (entry[1], entry[4]),
                    )
            self._writer.executemany(
                "INSERT INTO checkpoint (kafka_partition, next_offset) VALUES (?, ?) "
                "ON CONFLICT (kafka_partition) DO UPDATE SET next_offset = excluded.next_offset", sorted(checkpoint.items()),
            )
        except BaseException:
            self._writer.execute("ROLLBACK")
            raise
        self._writer.execute("COMMIT")
        return new

    def checkpoint(self) -> dict[int, int]:
        return {int(p): int(o) for p, o in self._reader.execute("SELECT kafka_partition, next_offset FROM checkpoint")}

    def balance(self, user_id: str) -> int | None:
        row = self._reader.execute("SELECT balance FROM balances WHERE user_id = ?", (user_id,)).fetchone()
        return None if row is None else int(row[0])

    def entries(self, user_id: str, before: int | None, limit: int) -> list[tuple[int, dict[str, object]]]:
        """The user's entries applied before entry `before`, newest first: (entry id, entry)."""
        rows = self._reader.execute(
            "SELECT entry_id, kind, amount, balance, pack_id, image_id, at FROM entries "
            "WHERE user_id = ? AND entry_id < ? ORDER BY entry_id DESC LIMIT ?",
            (user_id, (1 << 62) if before is None else before, limit),
        )
        return [(int(r[0]), {"kind": r[1], "amount": r[2], "balance": r[3], "pack_id": r[4], "image_id": r[5], "at": r[6]})
                for r in rows]


class StatementFeed(ConsumerLoop):
    """Follows `credits.events` from the file's checkpoint. `ready` is set once it has read
    up to the end offsets taken at start: before that a balance may be old, so none is given."""

    name = "statement-feed"
    max_records = 2000
    dead_letters: DeadLetters | None = None  # where malformed records go (invalid.dlq)

    def __init__(self, kafka: KafkaConfig, topic: str, statements: Statements) -> None:
        self.kafka, self.topic, self.statements = kafka, topic, statements
        self.ready = asyncio.Event()
        self.applied = 0  # entries new to the file since start
        self._catch_up_to: dict[TopicPartition, int] = {}
        self._next: dict[int, int] = {}
        self._decode = Decoder(CREDITS_EVENTS.events)
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="notifier-statements")

    async def start(self) -> None:
        """Returns at once: connecting and catching up happen in the background."""
        self.spawn()

    async def stop(self) -> None:
        await super().stop()
        self._writer.shutdown()

    async def _connect(self) -> None:
        consumer, tps = await read_from_start(self.kafka, self.topic, "packline-notifier-statements",
                                              max_partition_fetch_bytes=1 << 20)
        try:
            ends = await consumer.end_offsets(tps)
            begins = await consumer.beginning_offsets(tps)
            checkpoint = self.statements.checkpoint()
            if any(checkpoint.get(tp.partition, 0) > ends[tp] for tp in tps):
                log.warning("%s is behind the statements' checkpoint %s: rebuilding %s", self.topic, checkpoint,
                            self.statements.path)
                self.statements.reset()
                checkpoint = {}
            for tp in tps:
                start = max(checkpoint.get(tp.partition, 0), begins[tp])
                if start > 0:
                    consumer.seek(tp, start)
                self._next[tp.partition] = start
        except BaseException:
            await consumer.stop()
            raise
        self.consumer, self._catch_up_to = consumer, ends
        await self._check_ready()

    async def _check_ready(self) -> None:
        assert self.consumer is not None
        if self.ready.is_set():
            return
        for tp, end in self._catch_up_to.items():
            if await self.consumer.position(tp) < end:
                return
        log.info("statements caught up with %s: %d new entries", self.topic, self.applied)
        self.ready.set()

    async def step(self) -> None:
        if self.consumer is None:
            await self._connect()
            return
        batches = await self.consumer.getmany(timeout_ms=200 if self.ready.is_set() else 50, max_records=self.max_records)
        entries: list[Entry] = []
        checkpoint = dict(self._next)
        for records in batches.values():
            for record in records:
                checkpoint[record.partition] = record.offset + 1
                entry = self._entry(record)
                if entry is not None:
                    entries.append(entry)
        if batches:
            started = time.monotonic()
            try:
                self.applied += await asyncio.get_running_loop().run_in_executor(
                    self._writer, self.statements.write, entries, checkpoint)
            except BaseException:
                for tp, records in batches.items():  # read them again: applying is idempotent
                    self.consumer.seek(tp, records[0].offset)
                raise
            self._next = checkpoint
            log.debug("statements: %d entries written in %.3f s", len(entries), time.monotonic() - started)
        await self._check_ready()

    def _entry(self, record: Record) -> Entry | None:
        try:
            event = self._decode(record.value)
        except InvalidMessage as exc:
            log.warning("skipping %s[%s]@%s: %s", record.topic, record.partition, record.offset, exc)
            if self.dead_letters is not None:
                self.dead_letters.add(record, str(exc))
            return None
        return entry_of(event) if isinstance(event, CreditsChanged) else None
