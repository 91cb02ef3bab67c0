"""Credits logic over typed events: which ledger call, which events come out.

Each function takes an event and the ledger and returns the messages to publish. Event
ids are derived from the effect's key, so when a redelivered input re-emits its outputs
every downstream consumer recognises them as the same events.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from uuid import UUID

from services.credits import changes
from services.credits.ledger import ImageOutcome, Ledger, PackOrder, PackView
from shared.errors import InvalidMessage, UnknownAccount
from shared.events import (
    AccountCreate,
    CreditsBalance,
    CreditsChanged,
    CreditsGrant,
    ImageCompleted,
    ImageEntry,
    ImageFailed,
    ImageReplayed,
    ImageSpec,
    ImageState,
    MoneyReason,
    PackAccepted,
    PackCancel,
    PackCancelled,
    PackCommandResult,
    PackRegenerate,
    PackRequested,
    PackState,
    PackStatus,
    stable_id,
)
from shared.kafka import Outgoing
from shared.logs import lifecycle
from shared.pricing import draft, plan_pack
from shared.topics import CreditsCommand, ImageResult, Topics


def _status(t: Topics, view: PackView, status: PackState, *parts: object) -> Outgoing:
    images = [
        ImageEntry(image_id=i.image_id, kind=i.kind, status=i.status, attempts=i.attempts, url=i.url, error=i.error)
        for i in view.images
    ]
    event = PackStatus(
        event_id=stable_id(view.pack_id, "status", status, *parts), pack_id=UUID(view.pack_id), user_id=view.user_id,
        status=status, cost=view.cost, charged=view.charged, refunded=view.refunded, reason=view.reason,
        images=images,
    )
    return Outgoing.of(t.packs_status, event, view.pack_id)


def _money(t: Topics, view: PackView, reason: MoneyReason, key: str, image_id: str | None = None) -> Outgoing:
    event = CreditsChanged(
        event_id=stable_id("money", key), user_id=view.user_id, reason=reason,
        amount=view.money_moved, balance=view.balance or 0, pack_id=view.pack_id, image_id=image_id,
    )
    return Outgoing.of(t.credits_events, event, view.user_id)


def on_pack_requested(
    ev: PackRequested, ledger: Ledger, t: Topics, price_listing: int, price_aplus: int, refusal: str | None = None,
) -> list[Outgoing]:
    return on_packs_requested([(ev, refusal)], ledger, t, price_listing, price_aplus)


def on_packs_requested(
    batch: Sequence[tuple[PackRequested, str | None]], ledger: Ledger, t: Topics, price_listing: int, price_aplus: int,
) -> list[Outgoing]:
    """For each request (with its refusal reason, if intake refused it), in one ledger
    transaction: DRAFT, then PROCESSING with the debit and pack.accepted; or REJECTED
    (refused, no account, too few credits) with nothing charged."""
    planned = []
    for ev, refusal in batch:
        specs = plan_pack(ev.images, ev.aplus, price_listing, price_aplus)
        accepted = PackAccepted(
            event_id=stable_id(ev.pack_id, "accepted"), pack_id=ev.pack_id, user_id=ev.user_id, product=ev.product,
            images=specs, cost=sum(s.cost for s in specs),
        )
        planned.append((ev, specs, accepted, PackOrder(str(ev.pack_id), ev.user_id, specs, accepted.encode().decode(), refusal)))
    views = ledger.accept_packs([order for *_, order in planned])
    out: list[Outgoing] = []
    for (ev, specs, accepted, _), view in zip(planned, views, strict=True):
        if view.user_id != ev.user_id:
            raise InvalidMessage(f"pack_id {ev.pack_id} already belongs to another user")
        out += _outcome(t, ev, specs, accepted, view)
    return out


def _outcome(t: Topics, ev: PackRequested, specs: list[ImageSpec], accepted: PackAccepted, view: PackView) -> list[Outgoing]:
    pack_id = view.pack_id
    out = [Outgoing.of(t.packs_status, draft(ev, specs), pack_id)]
    if view.status in (PackState.REJECTED, PackState.CANCELLED):  # refused, or cancelled before it was read
        return out + [_status(t, view, view.status)]
    out.append(_processing(t, view, specs))
    lifecycle("debited", pack_id=pack_id, user_id=view.user_id, event_id=ev.event_id, amount=view.cost)
    # Emitted again on redelivery (same event id): the first attempt may have died before sending it.
    out.append(_money(t, replace(view, money_moved=-view.cost), "debited", f"debit:{pack_id}"))
    # PROCESSING is handed to the producer before pack.accepted, so image events normally
    # land after it in packs.status; only a retried produce batch can reorder the two
    # topics, and the pack's later snapshots (from the ledger) put the images right again.
    return out + [Outgoing.of(t.packs_accepted, accepted, pack_id)]


def _processing(t: Topics, view: PackView, specs: list[ImageSpec]) -> Outgoing:
    event = PackStatus(
        event_id=stable_id(view.pack_id, "status", PackState.PROCESSING, 0), pack_id=UUID(view.pack_id), user_id=view.user_id,
        status=PackState.PROCESSING, cost=view.cost, charged=view.cost, refunded=0,
        images=[ImageEntry(image_id=s.image_id, kind=s.kind) for s in specs],
    )
    return Outgoing.of(t.packs_status, event, view.pack_id)


def on_image_result(ev: ImageResult, ledger: Ledger, t: Topics) -> list[Outgoing]:
    if isinstance(ev, PackCancel):
        return on_cancel(ev, ledger, t)
    if isinstance(ev, PackRegenerate):
        return on_regenerate(ev, ledger, t)
    if isinstance(ev, ImageReplayed):
        view = ledger.reopen_image(str(ev.pack_id), ev.image_id, ev.run)
        if view is None or view.status != PackState.PROCESSING:
            return []
        lifecycle("replayed", pack_id=ev.pack_id, image_id=ev.image_id, user_id=ev.user_id, event_id=ev.event_id, run=ev.run)
        return [_status(t, view, PackState.PROCESSING, "reopened", ev.image_id, ev.run)]
    return on_image_results([ev], ledger, t)


def on_image_results(events: Sequence[ImageResult], ledger: Ledger, t: Topics) -> list[Outgoing]:
    """A poll's batch, each partition's records in order: each run of image outcomes in one
    ledger transaction (a pack's six results usually come together), anything else on its own."""
    out: list[Outgoing] = []
    outcomes: list[ImageCompleted | ImageFailed] = []
    for ev in [*events, None]:
        if isinstance(ev, ImageCompleted | ImageFailed):
            outcomes.append(ev)
            continue
        if outcomes:
            views = ledger.record_images([
                ImageOutcome(str(o.pack_id), o.image_id, o.run, isinstance(o, ImageCompleted), o.attempts,
                             url=o.url if isinstance(o, ImageCompleted) else None,
                             error=o.error if isinstance(o, ImageFailed) else None)
                for o in outcomes
            ])
            for outcome, view in zip(outcomes, views, strict=True):
                out += _after_outcome(outcome, view, ledger, t)
            outcomes.clear()
        if ev is not None:
            out += on_image_result(ev, ledger, t)
    return out


def _after_outcome(ev: ImageCompleted | ImageFailed, view: PackView | None, ledger: Ledger, t: Topics) -> list[Outgoing]:
    delivered = isinstance(ev, ImageCompleted)
    if view is None or (view.status == PackState.CANCELLED and not view.created):
        return []  # a cancelled pack takes no more outcomes
    # A redelivered result re-emits what its first handling emitted, under the same event
    # ids: that first handling may have committed the ledger and died before publishing.
    out: list[Outgoing] = []
    key = f"{ev.pack_id}:{ev.image_id}:{ev.run}"
    reason: MoneyReason = "recharged" if delivered else "refunded"
    entry = "recharge" if delivered else "refund"
    moved = view.money_moved if view.created else ledger.entry_amount(f"{entry}:{key}")
    if moved:
        if not delivered:
            lifecycle("refunded", pack_id=ev.pack_id, image_id=ev.image_id, user_id=ev.user_id, event_id=ev.event_id, amount=moved)
        out.append(_money(t, replace(view, money_moved=moved), reason, f"{reason}:{key}", ev.image_id))
        if view.status == PackState.PROCESSING:  # live refund figures before the pack settles
            out.append(_status(t, view, PackState.PROCESSING, "money", key))
    if view.status.terminal:
        lifecycle("settled", pack_id=ev.pack_id, image_id=ev.image_id, user_id=ev.user_id, event_id=ev.event_id, status=view.status.value)
        out.append(_status(t, view, view.status, "settled", max(i.run for i in view.images)))
    return out


def on_cancel(ev: PackCancel, ledger: Ledger, t: Topics) -> list[Outgoing]:
    """Refunds of the images not delivered, CANCELLED, word to generation to stop, and the
    answer to the api; all again, under the same ids, for a cancel read again."""
    decision = changes.cancel(ledger, str(ev.pack_id), ev.user_id)
    view = decision.view
    if view is None:
        return [_reply(t, ev, decision)]
    out = _moved(t, view, decision.moved, "refunded")
    delivered = [i.image_id for i in view.images if i.status == ImageState.COMPLETED]
    stop = PackCancelled(event_id=stable_id(view.pack_id, "cancelled"), pack_id=ev.pack_id, user_id=ev.user_id,
                         delivered=delivered)
    return out + [
        _status(t, view, PackState.CANCELLED),
        Outgoing.of(t.packs_cancelled, stop, view.pack_id),
        _reply(t, ev, decision),
    ]


def on_regenerate(ev: PackRegenerate, ledger: Ledger, t: Topics) -> list[Outgoing]:
    """The new run's holds, PROCESSING, its images for generation, and the answer."""
    decision = changes.regenerate(ledger, ev.event_id, str(ev.pack_id), ev.user_id, ev.images)
    view, accepted = decision.view, decision.accepted
    if view is None or accepted is None:
        return [_reply(t, ev, decision)]
    out = _moved(t, view, decision.moved, "recharged")
    if decision.created or view.status == PackState.PROCESSING:  # not for a run long finished
        out += [_status(t, view, PackState.PROCESSING, "run", accepted.run),
                Outgoing.of(t.packs_accepted, accepted, view.pack_id)]
    return out + [_reply(t, ev, decision)]


def _moved(t: Topics, view: PackView, moved: list[changes.Moved], reason: MoneyReason) -> list[Outgoing]:
    """One balance change per image, each with the balance right after it."""
    balance = (view.balance or 0) - sum(m.amount for m in moved)
    out = []
    for m in moved:
        balance += m.amount
        at = replace(view, money_moved=m.amount, balance=balance)
        out.append(_money(t, at, reason, f"{reason}:{view.pack_id}:{m.image_id}:{m.run}", m.image_id))
    return out


def _reply(t: Topics, ev: PackCancel | PackRegenerate, decision: changes.Decision) -> Outgoing:
    reply = PackCommandResult(
        event_id=stable_id("reply", ev.event_id), command_id=ev.event_id, pack_id=ev.pack_id, user_id=ev.user_id,
        outcome=decision.outcome, message=decision.message, run=decision.run,
    )
    return Outgoing.of(t.packs_replies, reply, ev.pack_id)


def redrive(ledger: Ledger, t: Topics, idle_s: float) -> list[Outgoing]:
    """Packs with pending images and no result for `idle_s` get their pack.accepted again
    (same event id). Generation reports images that already exist instead of making them
    again, and the ledger charges per image state, so this can only add missing work.
    It guards invariant 1 against any consumer-side loss (docs/architecture.md)."""
    out = []
    for raw in ledger.stalled(idle_s):
        accepted = PackAccepted.model_validate_json(raw)
        out.append(Outgoing(t.packs_accepted, raw.encode(), str(accepted.pack_id).encode(), [("x-redriven", b"1")]))
    return out


def on_command(ev: CreditsCommand, ledger: Ledger, t: Topics) -> list[Outgoing]:
    out: list[Outgoing] = []
    balance: int | None
    error = None
    if isinstance(ev, AccountCreate):
        balance, created = ledger.create_account(ev.user_id, ev.credits)
        if created:
            out.append(_changed(t, ev, "account_created", ev.credits, balance))
    elif isinstance(ev, CreditsGrant):
        try:
            balance, created = ledger.grant(ev.user_id, ev.amount, ev.event_id)
            if created:
                out.append(_changed(t, ev, "granted", ev.amount, balance))
        except UnknownAccount:
            balance, error = None, f"unknown account {ev.user_id!r}"
    else:
        balance = ledger.balance(ev.user_id)
        error = None if balance is not None else f"unknown account {ev.user_id!r}"
    reply = CreditsBalance(
        event_id=stable_id("reply", ev.event_id), user_id=ev.user_id, balance=balance, command_id=ev.event_id, error=error,
    )
    return out + [Outgoing.of(t.credits_events, reply, ev.user_id)]


def _changed(t: Topics, ev: CreditsCommand, reason: MoneyReason, amount: int, balance: int) -> Outgoing:
    event = CreditsChanged(
        event_id=stable_id("money", ev.event_id), user_id=ev.user_id, reason=reason,
        amount=amount, balance=balance, command_id=ev.event_id,
    )
    return Outgoing.of(t.credits_events, event, ev.user_id)
