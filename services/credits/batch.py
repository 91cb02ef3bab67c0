"""The ledger's two hot paths, a batch at a time, in SQLAlchemy Core: accepting packs (an
intake batch) and recording image outcomes (a poll's batch).

Each reads what the batch touches in one or two queries, decides in memory in the batch's
order with the same rules as one call per item, and writes only what changed. The ORM's
per-row loads and flushes cost more CPU than the whole rest of a pack's handling.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, cast

from sqlalchemy import Connection, Table, bindparam, insert, select, update

from services.credits.tables import Account, LedgerEntry, Pack, PackImage, now
from shared.events import ImageSpec, ImageState, MoneyReason, PackState

ACCOUNTS = cast(Table, Account.__table__)
ENTRIES = cast(Table, LedgerEntry.__table__)
PACKS = cast(Table, Pack.__table__)
IMAGES = cast(Table, PackImage.__table__)


@dataclass(frozen=True)
class PackOrder:
    """A pack request as the ledger takes it: what to charge, or why to refuse it."""

    pack_id: str
    user_id: str
    specs: list[ImageSpec]
    accepted_event: str | None = None  # kept to drive the pack again if it stalls
    refusal: str | None = None


@dataclass(frozen=True)
class ImageOutcome:
    """An image's outcome as the ledger takes it."""

    pack_id: str
    image_id: str
    run: int
    delivered: bool
    attempts: int
    url: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class ImageRow:
    """An image of a pack as stored. Frozen: a view keeps the images as they were when it
    was made, even when a later outcome of the same batch changes one."""

    image_id: str
    kind: str
    status: ImageState
    attempts: int
    url: str | None
    error: str | None
    cost: int
    charged: bool
    run: int


@dataclass
class PackView:
    """What the rest of the system is told about a pack after a ledger operation."""

    pack_id: str
    user_id: str
    status: PackState
    cost: int
    charged: int
    reason: str | None
    images: list[ImageRow]
    balance: int | None = None
    money_moved: int = 0  # signed change to the balance made by this very call
    created: bool = False  # False when the call found its effect already applied

    @property
    def refunded(self) -> int:
        return self.cost - self.charged if self.status != PackState.REJECTED else 0


@dataclass
class PackRow:
    """A pack as stored, the fields a view needs (its status changes as a batch applies)."""

    pack_id: str
    user_id: str
    cost: int
    status: PackState
    reason: str | None


_PACK_COLUMNS = (PACKS.c.pack_id, PACKS.c.user_id, PACKS.c.cost, PACKS.c.status, PACKS.c.reason)
_IMAGE_COLUMNS = (IMAGES.c.image_id, IMAGES.c.kind, IMAGES.c.status, IMAGES.c.attempts, IMAGES.c.url, IMAGES.c.error,
                  IMAGES.c.cost, IMAGES.c.charged, IMAGES.c.run)


def view(pack: PackRow, images: list[ImageRow], balance: int | None, money_moved: int = 0, created: bool = False) -> PackView:
    charged = sum(i.cost for i in images if i.charged)
    return PackView(pack.pack_id, pack.user_id, pack.status, pack.cost, charged, pack.reason, images, balance, money_moved, created)


def balance_of(conn: Connection, user_id: str) -> int:
    return int(conn.scalar(select(ACCOUNTS.c.balance).where(ACCOUNTS.c.user_id == user_id)) or 0)


def accept(conn: Connection, orders: Sequence[PackOrder]) -> list[PackView]:
    """`Ledger.accept_packs` in one transaction. Packs already stored are answered from the
    store; the packs' primary key still guards against another credits instance taking one
    meanwhile (an IntegrityError the caller handles)."""
    ids = {o.pack_id for o in orders}
    known = {r.pack_id: PackRow(*r) for r in conn.execute(select(*_PACK_COLUMNS).where(PACKS.c.pack_id.in_(ids)))}
    images = _images(conn, known, lock=False)
    users = {o.user_id for o in orders}
    accounts = set(conn.scalars(select(ACCOUNTS.c.user_id).where(ACCOUNTS.c.user_id.in_(users))))
    new_packs: list[dict[str, Any]] = []
    new_images: list[dict[str, Any]] = []
    entries: list[dict[str, Any]] = []
    views = []
    for order in orders:
        pack_id, user_id = order.pack_id, order.user_id
        stored = known.get(pack_id)
        if stored is not None:
            views.append(view(stored, list(images.get(pack_id, {}).values()), balance_of(conn, stored.user_id)))
            continue
        cost = sum(spec.cost for spec in order.specs)
        pack = known[pack_id] = PackRow(pack_id, user_id, cost, PackState.PROCESSING, None)
        rows: list[ImageRow] = []
        balance: int | None = None
        if order.refusal is not None or user_id not in accounts:
            pack.status, pack.reason = PackState.REJECTED, order.refusal or f"unknown account {user_id!r}"
        else:
            # Conditional update: two credits instances can never overdraw the account.
            balance = conn.scalar(
                update(ACCOUNTS).where(ACCOUNTS.c.user_id == user_id, ACCOUNTS.c.balance >= cost)
                .values(balance=ACCOUNTS.c.balance - cost).returning(ACCOUNTS.c.balance)
            )
            if balance is None:
                balance = balance_of(conn, user_id)
                pack.status, pack.reason = PackState.REJECTED, f"insufficient credits: pack costs {cost}, balance {balance}"
            else:
                entries.append(_entry(f"debit:{pack_id}", user_id, pack_id, None, -cost, "debited"))
                rows = [ImageRow(s.image_id, s.kind, ImageState.PENDING, 0, None, None, s.cost, True, 0) for s in order.specs]
        new_packs.append({"pack_id": pack_id, "user_id": user_id, "cost": cost, "status": pack.status,
                          "reason": pack.reason, "accepted_event": order.accepted_event})
        new_images += [{"pack_id": pack_id, "image_id": r.image_id, "kind": r.kind, "cost": r.cost, **_image_values(r)}
                       for r in rows]
        images[pack_id] = {r.image_id: r for r in rows}
        money = -cost if pack.status == PackState.PROCESSING else 0
        views.append(view(pack, rows, balance if balance is not None else balance_of(conn, user_id), money, created=True))
    _insert(conn, PACKS, new_packs)  # first: its primary key is the idempotency guard
    _insert(conn, IMAGES, new_images)
    _insert(conn, ENTRIES, entries)
    return views


def record(conn: Connection, outcomes: Sequence[ImageOutcome]) -> list[PackView | None]:
    """`Ledger.record_images` in one transaction, holding the batch's packs' rows."""
    ids = {o.pack_id for o in outcomes}
    # Locked in pack id order: two credits instances never wait on each other's packs in a cycle.
    packs = {r.pack_id: PackRow(*r) for r in conn.execute(
        select(*_PACK_COLUMNS).where(PACKS.c.pack_id.in_(ids)).order_by(PACKS.c.pack_id).with_for_update())}
    images = _images(conn, packs, lock=True)
    balances: dict[str, int] = {}  # the running balance of each user read or moved in this batch
    changed: dict[tuple[str, str], ImageRow] = {}
    touched: dict[str, None] = {}
    entries: list[dict[str, Any]] = []
    views: list[PackView | None] = []
    for o in outcomes:
        pack, pack_images = packs.get(o.pack_id), images.get(o.pack_id, {})
        img = pack_images.get(o.image_id)
        if pack is None or img is None:
            views.append(None)
            continue
        repeated_failure = img.status == ImageState.FAILED and o.run == img.run and not o.delivered
        # A cancelled pack takes no outcome that came after the cancel in the pack's log.
        if pack.status == PackState.CANCELLED or o.run < img.run or img.status == ImageState.COMPLETED or repeated_failure:
            if pack.user_id not in balances:
                balances[pack.user_id] = balance_of(conn, pack.user_id)
            views.append(view(pack, list(pack_images.values()), balances[pack.user_id]))
            continue
        if o.delivered:
            new = replace(img, status=ImageState.COMPLETED, run=o.run, attempts=o.attempts, url=o.url, error=None, charged=True)
        else:
            new = replace(img, status=ImageState.FAILED, run=o.run, attempts=o.attempts, error=o.error, charged=False)
        moved = 0
        if img.charged != new.charged:  # a failure gives a held price back, a replayed delivery holds it again
            moved = img.cost if img.charged else -img.cost
            reason: MoneyReason = "refunded" if img.charged else "recharged"
            key = f"{'refund' if img.charged else 'recharge'}:{o.pack_id}:{o.image_id}:{o.run}"
            entries.append(_entry(key, pack.user_id, o.pack_id, o.image_id, moved, reason))
            # Per move, not per batch: each CreditsChanged carries the balance right after its move.
            balances[pack.user_id] = conn.execute(
                update(ACCOUNTS).where(ACCOUNTS.c.user_id == pack.user_id)
                .values(balance=ACCOUNTS.c.balance + moved).returning(ACCOUNTS.c.balance)
            ).scalar_one()
        pack_images[o.image_id] = changed[(o.pack_id, o.image_id)] = new
        touched[o.pack_id] = None
        rows = list(pack_images.values())
        if all(i.status.finished for i in rows):
            done = sum(i.status == ImageState.COMPLETED for i in rows)
            pack.status = PackState.COMPLETED if done == len(rows) else PackState.PARTIAL if done else PackState.FAILED
        views.append(view(pack, rows, balances[pack.user_id] if moved else None, moved, created=True))
    if changed:
        conn.execute(
            update(IMAGES).where(IMAGES.c.pack_id == bindparam("k_pack"), IMAGES.c.image_id == bindparam("k_image")),
            [{"k_pack": p, "k_image": i, **_image_values(r)} for (p, i), r in changed.items()],
        )
    if touched:
        at = now()
        conn.execute(update(PACKS).where(PACKS.c.pack_id == bindparam("k_pack")),
                     [{"k_pack": p, "status": packs[p].status, "updated_at": at} for p in touched])
    _insert(conn, ENTRIES, entries)
    return views


def _images(conn: Connection, packs: Iterable[str], lock: bool) -> dict[str, dict[str, ImageRow]]:
    """The packs' images, each pack's in image id order (the order the database sorts them in)."""
    query = select(IMAGES.c.pack_id, *_IMAGE_COLUMNS).where(IMAGES.c.pack_id.in_(list(packs)))
    query = query.order_by(IMAGES.c.pack_id, IMAGES.c.image_id)
    out: dict[str, dict[str, ImageRow]] = {}
    for pack_id, *columns in conn.execute(query.with_for_update() if lock else query):
        row = ImageRow(*columns)
        out.setdefault(pack_id, {})[row.image_id] = row
    return out


def _image_values(r: ImageRow) -> dict[str, Any]:
    return {"status": r.status, "run": r.run, "attempts": r.attempts, "url": r.url,
            "error": r.error, "charged": r.charged}


def _entry(key: str, user_id: str, pack_id: str, image_id: str | None, amount: int, reason: MoneyReason) -> dict[str, Any]:
    return {"entry_key": key, "user_id": user_id, "pack_id": pack_id, "image_id": image_id, "amount": amount, "reason": reason}


def _insert(conn: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    if rows:
        conn.execute(insert(table), rows)
