"""The credits ledger's tables (SQLAlchemy 2 ORM). Only the ledger (`ledger.py`, `batch.py`,
`changes.py`) and the migrations read or write them: the rest of the system asks the `Ledger`."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Boolean, DateTime, Enum, ForeignKey, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.events import ImageState, MoneyReason, PackState


def now() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


def _status_column(states: type[PackState] | type[ImageState]) -> Enum:
    """A status stored as its name in a VARCHAR(16), read back as the enum."""
    return Enum(states, native_enum=False, create_constraint=False, length=16, validate_strings=True)


class Account(Base):
    __tablename__ = "accounts"
    user_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    balance: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


class LedgerEntry(Base):
    __tablename__ = "ledger_entries"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    entry_key: Mapped[str] = mapped_column(String(200), unique=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("accounts.user_id"), index=True)
    pack_id: Mapped[str | None] = mapped_column(String(36), index=True)
    image_id: Mapped[str | None] = mapped_column(String(64))
    amount: Mapped[int] = mapped_column(Integer)  # signed: + credits the account, - charges it
    reason: Mapped[MoneyReason] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


class Pack(Base):
    __tablename__ = "packs"
    pack_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(64), index=True)
    cost: Mapped[int] = mapped_column(Integer)
    status: Mapped[PackState] = mapped_column(_status_column(PackState))
    reason: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    accepted_event: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=now)


class PackImage(Base):
    __tablename__ = "pack_images"
    pack_id: Mapped[str] = mapped_column(ForeignKey("packs.pack_id"), primary_key=True)
    image_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    cost: Mapped[int] = mapped_column(Integer)
    status: Mapped[ImageState] = mapped_column(_status_column(ImageState), default=ImageState.PENDING)
    charged: Mapped[bool] = mapped_column(Boolean)
    run: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    url: Mapped[str | None] = mapped_column(String(500))
    error: Mapped[str | None] = mapped_column(String(1000))


class PackChange(Base):
    """A regeneration, by the id of the command that asked for it (services/credits/changes.py)."""

    __tablename__ = "pack_changes"
    command_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    pack_id: Mapped[str] = mapped_column(String(36), index=True)
    run: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
