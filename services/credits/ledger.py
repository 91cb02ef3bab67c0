"""The credits ledger (SQLAlchemy 2; SQLite by default, PostgreSQL in production).

Every money movement is a row in `ledger_entries` with a unique `entry_key`, and every
balance change happens in the same transaction as that row, so a redelivered or
replayed event can never move money twice. `pack_images.charged` says whether an image's
price is currently held; the refund/recharge flips are conditional on it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import create_engine, event, func, select, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from services.credits import batch
from services.credits.batch import ImageOutcome as ImageOutcome
from services.credits.batch import ImageRow as ImageRow
from services.credits.batch import PackOrder as PackOrder
from services.credits.batch import PackView as PackView
from services.credits.tables import Account, LedgerEntry, Pack, PackImage, now
from shared.errors import UnknownAccount
from shared.events import ImageSpec, ImageState, MoneyReason, PackState

MIGRATIONS = Path(__file__).parent / "migrations"


class Ledger:
    def __init__(self, url: str) -> None:
        self.engine: Engine = create_engine(url, future=True, **_engine_args(url))
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
            # Take the write lock when a transaction starts: two credits processes then
            # queue on busy_timeout instead of failing when a reader upgrades to a writer.
            event.listen(self.engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    def create_schema(self) -> None:
        """Bring the schema to the newest Alembic revision (idempotent; safe to run from
        several credits instances at once on PostgreSQL thanks to an advisory lock)."""
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(7361)"))
            config.attributes["connection"] = conn
            command.upgrade(config, "head")

    # --- accounts -------------------------------------------------------------------
    def create_account(self, user_id: str, credits: int) -> tuple[int, bool]:
        """Returns (balance, created). Creating an existing account changes nothing."""
        with self.sessions.begin() as s:
            existing = s.get(Account, user_id)
            if existing:
                return existing.balance, False
            s.add(Account(user_id=user_id, balance=credits))
            s.flush()
            s.add(LedgerEntry(entry_key=f"open:{user_id}", user_id=user_id, amount=credits, reason="account_created"))
        return credits, True

    def grant(self, user_id: str, amount: int, key: str) -> tuple[int, bool]:
        with self.sessions.begin() as s:
            if s.get(Account, user_id) is None:
                raise UnknownAccount(user_id)
            if s.scalar(select(LedgerEntry.id).where(LedgerEntry.entry_key == f"grant:{key}")):
                return self.balance_in(s, user_id), False
            s.add(LedgerEntry(entry_key=f"grant:{key}", user_id=user_id, amount=amount, reason="granted"))
            s.execute(update(Account).where(Account.user_id == user_id).values(balance=Account.balance + amount))
            return self.balance_in(s, user_id), True

    def balance(self, user_id: str) -> int | None:
        with self.sessions() as s:
            account = s.get(Account, user_id)
            return account.balance if account else None

    # --- packs ----------------------------------------------------------------------
    def accept_pack(
        self, pack_id: str, user_id: str, specs: list[ImageSpec], accepted_event: str | None = None,
        refusal: str | None = None,
    ) -> PackView:
        """Debit the pack's cost once, or reject it (for `refusal`, or for want of an account
        or of credits). A second call returns the first outcome."""
        return self.accept_packs([PackOrder(pack_id, user_id, specs, accepted_event, refusal)])[0]

    def accept_packs(self, orders: Sequence[PackOrder]) -> list[PackView]:
        """`accept_pack` for several packs in one transaction (the intake's batches)."""
        try:
            with self.engine.begin() as conn:
                return batch.accept(conn, orders)
        except IntegrityError:
            # Another credits instance took one of these packs meanwhile: one at a time, then.
            if len(orders) > 1:
                return [view for order in orders for view in self.accept_packs([order])]
            with self.sessions() as s:
                existing = s.get(Pack, orders[0].pack_id)
                if existing is None:
                    raise
                return [self.view_of(s, existing, created=False)]

    def record_image(
        self, pack_id: str, image_id: str, *, run: int, delivered: bool, attempts: int,
        url: str | None = None, error: str | None = None,
    ) -> PackView | None:
        """Apply an image's outcome: a failure refunds a held price, a delivery of a
        refunded (replayed) image charges it again. Stale or repeated outcomes change nothing."""
        return self.record_images([ImageOutcome(pack_id, image_id, run, delivered, attempts, url, error)])[0]

    def record_images(self, outcomes: Sequence[ImageOutcome]) -> list[PackView | None]:
        """`record_image` for several outcomes (a poll's batch), in order, in one transaction."""
        with self.engine.begin() as conn:
            return batch.record(conn, outcomes)

    def reopen_image(self, pack_id: str, image_id: str, run: int) -> PackView | None:
        """An operator replays a dead-lettered image: it is pending again under a new run."""
        with self.sessions.begin() as s:
            pack = s.get(Pack, pack_id, with_for_update=True)
            img = s.get(PackImage, (pack_id, image_id), with_for_update=True)
            if pack is None or img is None:
                return None
            if run <= img.run or img.status != ImageState.FAILED or pack.status == PackState.CANCELLED:
                return self.view_of(s, pack, created=False)
            img.run, img.status, img.attempts, img.error = run, ImageState.PENDING, 0, None
            pack.status, pack.updated_at = PackState.PROCESSING, now()
            s.flush()
            return self.view_of(s, pack, created=True)

    def stalled(self, idle_s: float, limit: int = 100) -> list[str]:
        """pack.accepted of packs with images still pending and no result for `idle_s`;
        their idle clock restarts, so each is driven again at most once per `idle_s`."""
        cutoff = datetime.fromtimestamp(now().timestamp() - idle_s, UTC)
        with self.sessions.begin() as s:
            pending = select(PackImage.pack_id).where(PackImage.status == ImageState.PENDING)
            packs = list(s.scalars(
                select(Pack).where(Pack.status == PackState.PROCESSING, Pack.updated_at < cutoff, Pack.pack_id.in_(pending),
                                   Pack.accepted_event.is_not(None)).limit(limit).with_for_update()
            ))
            for pack in packs:
                pack.updated_at = now()
            return [p.accepted_event for p in packs if p.accepted_event]

    def pack(self, pack_id: str) -> PackView | None:
        with self.sessions() as s:
            pack = s.get(Pack, pack_id)
            return self.view_of(s, pack) if pack else None

    # --- helpers --------------------------------------------------------------------
    def move(self, s: Session, pack: Pack, img: PackImage, amount: int, reason: MoneyReason, key: str) -> int:
        s.add(LedgerEntry(entry_key=key, user_id=pack.user_id, pack_id=pack.pack_id, image_id=img.image_id, amount=amount, reason=reason))
        s.execute(update(Account).where(Account.user_id == pack.user_id).values(balance=Account.balance + amount))
        return amount

    def balance_in(self, s: Session, user_id: str) -> int:
        return int(s.scalar(select(Account.balance).where(Account.user_id == user_id)) or 0)

    def view_of(
        self, s: Session, pack: Pack, created: bool = False, money_moved: int = 0, balance: bool = True,
    ) -> PackView:
        """`balance`: False when nobody will be told the balance (no money moved), to spare a query."""
        images = [
            ImageRow(i.image_id, i.kind, i.status, i.attempts, i.url, i.error, i.cost, i.charged, i.run)
            for i in s.scalars(select(PackImage).where(PackImage.pack_id == pack.pack_id).order_by(PackImage.image_id))
        ]
        row = batch.PackRow(pack.pack_id, pack.user_id, pack.cost, pack.status, pack.reason)
        return batch.view(row, images, self.balance_in(s, pack.user_id) if balance else None, money_moved, created)

    def entry_amount(self, entry_key: str) -> int | None:
        with self.sessions() as s:
            return s.scalar(select(LedgerEntry.amount).where(LedgerEntry.entry_key == entry_key))

    def ledger_sum(self, pack_id: str) -> int:
        with self.sessions() as s:
            return int(s.scalar(select(func.coalesce(func.sum(LedgerEntry.amount), 0)).where(LedgerEntry.pack_id == pack_id)) or 0)

    # --- audit ----------------------------------------------------------------------
    def audit_view(self) -> LedgerAudit:
        """Everything the ledger holds, as plain values, read in one session: what
        `packline audit` reconciles with the topics."""
        with self.sessions() as s:
            # Packs before their images: a pack read as terminal has all its outcomes in what follows.
            packs = {
                p.pack_id: AuditPack(
                    pack_id=p.pack_id, user_id=p.user_id, status=p.status, cost=p.cost,
                    created_at=p.created_at.replace(tzinfo=p.created_at.tzinfo or UTC),  # SQLite keeps no zone: it is UTC
                    images=[],
                )
                for p in s.scalars(select(Pack))
            }
            for img in s.scalars(select(PackImage)):
                if img.pack_id in packs:
                    packs[img.pack_id].images.append(AuditImage(image_id=img.image_id, status=img.status, cost=img.cost))
            entries = [
                AuditEntry(user_id=e.user_id, pack_id=e.pack_id, image_id=e.image_id, amount=e.amount, reason=e.reason)
                for e in s.scalars(select(LedgerEntry))
            ]
            accounts = [AuditAccount(user_id=a.user_id, balance=a.balance) for a in s.scalars(select(Account))]
        return LedgerAudit(packs=packs, entries=entries, accounts=accounts)


@dataclass(frozen=True)
class AuditImage:
    image_id: str
    status: ImageState
    cost: int


@dataclass(frozen=True)
class AuditPack:
    pack_id: str
    user_id: str
    status: PackState
    cost: int
    created_at: datetime  # timezone-aware
    images: list[AuditImage]


@dataclass(frozen=True)
class AuditEntry:
    user_id: str
    pack_id: str | None
    image_id: str | None
    amount: int  # signed: + credits the account, - charges it
    reason: MoneyReason


@dataclass(frozen=True)
class AuditAccount:
    user_id: str
    balance: int


@dataclass(frozen=True)
class LedgerAudit:
    """A snapshot of the ledger: packs by id (with their images), every entry, every account."""

    packs: dict[str, AuditPack]
    entries: list[AuditEntry]
    accounts: list[AuditAccount]


def _engine_args(url: str) -> dict[str, object]:
    if url.startswith("sqlite"):
        return {"connect_args": {"check_same_thread": False, "timeout": 30}}
    return {"pool_pre_ping": True}


def _sqlite_pragmas(dbapi_conn: sqlite3.Connection, _record: object) -> None:
    dbapi_conn.isolation_level = None  # pysqlite must not BEGIN on its own
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()
