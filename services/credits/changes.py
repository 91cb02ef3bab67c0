"""The owner's changes to a pack after it was requested, decided in the ledger: cancel it,
or have its failed images made again (a regeneration, as a new run).

Both come through `images.results`, in the pack's log beside its image outcomes, and each is
one transaction holding the pack's row, so their order against the outcomes is the log's:
an image delivered before a cancel is charged, one that arrives after it is not."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, cast

from sqlalchemy import CursorResult, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.credits.ledger import Ledger, PackView
from services.credits.tables import Account, LedgerEntry, Pack, PackChange, PackImage, now
from shared.events import ImageState, PackAccepted, PackState, stable_id
from shared.pricing import spec

Outcome = Literal["accepted", "not_found", "conflict", "insufficient_credits", "unknown_images"]


@dataclass(frozen=True)
class Moved:
    """One image's price given back (a cancel) or held again (a regeneration)."""

    image_id: str
    run: int
    amount: int  # signed, as the ledger entry


@dataclass
class Decision:
    outcome: Outcome
    message: str | None = None
    view: PackView | None = None
    created: bool = False  # False: this change was already applied (a redelivered command)
    moved: list[Moved] = field(default_factory=list)
    run: int | None = None
    accepted: PackAccepted | None = None  # a regeneration's new run, for generation


def refused(outcome: Outcome, message: str) -> Decision:
    return Decision(outcome, message)


def cancel(ledger: Ledger, pack_id: str, user_id: str) -> Decision:
    """Stop a pack in progress: its images not delivered yet are cancelled and their price
    refunded once (the same entry key as a failure of that run would use). A pack whose
    request credits has not read yet is recorded as cancelled, and intake finds it so."""
    try:
        with ledger.sessions.begin() as s:
            pack = s.get(Pack, pack_id, with_for_update=True)
            if pack is None:
                pack = Pack(pack_id=pack_id, user_id=user_id, cost=0, status=PackState.CANCELLED,
                            reason="cancelled before it started")
                s.add(pack)
                s.flush()  # the primary key: intake taking the request at this moment fails one of us
                return Decision("accepted", view=ledger.view_of(s, pack, created=True), created=True)
            if pack.user_id != user_id:
                return refused("not_found", "no such pack")
            if pack.status == PackState.CANCELLED:
                return Decision("accepted", view=ledger.view_of(s, pack), moved=_refunds(s, pack))
            if pack.status != PackState.PROCESSING:
                return refused("conflict", f"the pack is {pack.status.value}: only a pack in progress can be cancelled")
            moved = []
            for img in _images(s, pack_id):
                if img.status != ImageState.PENDING:
                    continue  # delivered (charged), or failed (refunded already)
                img.status = ImageState.CANCELLED
                if img.charged:
                    key = f"refund:{pack_id}:{img.image_id}:{img.run}"
                    moved.append(Moved(img.image_id, img.run, ledger.move(s, pack, img, img.cost, "refunded", key)))
                img.charged = False
            pack.status, pack.reason, pack.updated_at = PackState.CANCELLED, "cancelled by its owner", now()
            s.flush()
            return Decision("accepted", view=ledger.view_of(s, pack, created=True), created=True, moved=moved)
    except IntegrityError:
        return cancel(ledger, pack_id, user_id)  # intake took the request first: cancel the pack it made


def regenerate(ledger: Ledger, command_id: str, pack_id: str, user_id: str, wanted: list[str] | None) -> Decision:
    """Make failed images of a finished pack again, as run N+1: their prices are held again
    (refunded if they fail again), paid from the balance like a new pack. A command read
    again is answered as it was decided (its run is remembered by its id)."""
    try:
        with ledger.sessions.begin() as s:
            pack = s.get(Pack, pack_id, with_for_update=True)
            if pack is None or pack.user_id != user_id:
                return refused("not_found", "no such pack")
            done = s.get(PackChange, command_id)
            if done is not None:
                return _decided(s, ledger, pack, done.run)
            return _regenerate(s, ledger, command_id, pack, wanted)
    except IntegrityError:  # another credits instance applied this very command meanwhile
        return regenerate(ledger, command_id, pack_id, user_id, wanted)


def _regenerate(s: Session, ledger: Ledger, command_id: str, pack: Pack, wanted: list[str] | None) -> Decision:
    pack_id, user_id = pack.pack_id, pack.user_id
    if pack.status not in (PackState.PARTIAL, PackState.FAILED):
        return refused("conflict", f"the pack is {pack.status.value}: only a PARTIAL or FAILED pack can be regenerated")
    images = {img.image_id: img for img in _images(s, pack_id)}
    unknown = sorted(set(wanted or ()) - images.keys())
    if unknown:
        return refused("unknown_images", f"the pack has no images {unknown}")
    chosen = [images[i] for i in dict.fromkeys(wanted)] if wanted else [
        img for img in images.values() if img.status == ImageState.FAILED]
    not_failed = [img.image_id for img in chosen if img.status != ImageState.FAILED]
    if not_failed:
        return refused("conflict", f"only failed images can be made again; not failed: {not_failed}")
    cost = sum(img.cost for img in chosen)
    held = cast(CursorResult[Any], s.execute(
        update(Account).where(Account.user_id == user_id, Account.balance >= cost).values(balance=Account.balance - cost)
    ))
    if not held.rowcount:
        return refused("insufficient_credits", f"making these images again costs {cost}, balance {ledger.balance_in(s, user_id)}")
    run = max(img.run for img in images.values()) + 1
    for img in chosen:
        img.status, img.run, img.attempts, img.error, img.url, img.charged = ImageState.PENDING, run, 0, None, None, True
        s.add(LedgerEntry(entry_key=f"recharge:{pack_id}:{img.image_id}:{run}", user_id=user_id, pack_id=pack_id,
                          image_id=img.image_id, amount=-img.cost, reason="recharged"))
    accepted = PackAccepted(
        event_id=stable_id(pack_id, "accepted", run), pack_id=pack_id, user_id=user_id,
        product=PackAccepted.model_validate_json(pack.accepted_event or "{}").product,
        images=[spec(img.kind, img.cost) for img in chosen], cost=cost, run=run,
    )
    pack.status, pack.reason, pack.updated_at = PackState.PROCESSING, None, now()
    pack.accepted_event = accepted.model_dump_json()  # what a stalled run is driven with again
    s.add(PackChange(command_id=command_id, pack_id=pack_id, run=run))
    s.flush()
    return Decision("accepted", view=ledger.view_of(s, pack, created=True), created=True, run=run, accepted=accepted,
                    moved=[Moved(img.image_id, run, -img.cost) for img in chosen])


def _decided(s: Session, ledger: Ledger, pack: Pack, run: int) -> Decision:
    """A regeneration already applied: its run's images and holds, read back."""
    entries = list(s.scalars(select(LedgerEntry).where(
        LedgerEntry.pack_id == pack.pack_id, LedgerEntry.reason == "recharged",
        LedgerEntry.entry_key.like(f"recharge:{pack.pack_id}:%:{run}"))))
    moved = [Moved(e.image_id or "", run, e.amount) for e in entries]
    images = {img.image_id: img for img in _images(s, pack.pack_id)}
    accepted = PackAccepted(
        event_id=stable_id(pack.pack_id, "accepted", run), pack_id=pack.pack_id, user_id=pack.user_id,
        product=PackAccepted.model_validate_json(pack.accepted_event or "{}").product,
        images=[spec(images[m.image_id].kind, images[m.image_id].cost) for m in moved], cost=-sum(m.amount for m in moved),
        run=run,
    )
    return Decision("accepted", view=ledger.view_of(s, pack), run=run, accepted=accepted, moved=moved)


def _images(s: Session, pack_id: str) -> list[PackImage]:
    return list(s.scalars(select(PackImage).where(PackImage.pack_id == pack_id).order_by(PackImage.image_id).with_for_update()))


def _refunds(s: Session, pack: Pack) -> list[Moved]:
    """The refunds a cancel made, read back (to publish them again under the same ids)."""
    out = []
    for img in _images(s, pack.pack_id):
        if img.status == ImageState.CANCELLED:
            amount = s.scalar(select(LedgerEntry.amount).where(
                LedgerEntry.entry_key == f"refund:{pack.pack_id}:{img.image_id}:{img.run}"))
            if amount:
                out.append(Moved(img.image_id, img.run, amount))
    return out

