"""Cancel and regenerate in the ledger (services/credits/changes.py), on a real SQLite file
and a real PostgreSQL: each image's price moves once, whatever is read twice."""

from __future__ import annotations

import uuid

import pytest

from services.credits import changes, handlers
from services.credits.ledger import Ledger
from shared.events import (
    CreditsChanged,
    ImageCompleted,
    ImageFailed,
    ImageSpec,
    PackAccepted,
    PackCancel,
    PackCancelled,
    PackCommandResult,
    Product,
    decode,
)
from shared.topics import Topics

SPECS = [ImageSpec(image_id=k, kind=k, cost=1) for k in ("main", "detail", "scale")] + [
    ImageSpec(image_id="aplus_banner", kind="aplus_banner", cost=2, width=1536, height=1024)
]
T = Topics("x.")


@pytest.fixture
def ledger(database_url: str) -> Ledger:
    ledger = Ledger(database_url)
    ledger.create_schema()
    ledger.create_account("alice", 10)
    ledger.create_account("bob", 10)
    return ledger


def accept(ledger: Ledger) -> str:
    pack_id = str(uuid.uuid4())
    accepted = PackAccepted(pack_id=pack_id, user_id="alice", product=Product(name="Mug"), images=SPECS, cost=5)
    ledger.accept_pack(pack_id, "alice", SPECS, accepted.model_dump_json())
    return pack_id


def test_a_cancel_refunds_what_was_not_delivered_once(ledger: Ledger) -> None:
    pack_id = accept(ledger)
    ledger.record_image(pack_id, "main", run=0, delivered=True, attempts=1, url="u")
    ledger.record_image(pack_id, "detail", run=0, delivered=False, attempts=3, error="policy")  # refunded already
    first = changes.cancel(ledger, pack_id, "alice")
    assert first.outcome == "accepted" and first.created
    assert sorted((m.image_id, m.amount) for m in first.moved) == [("aplus_banner", 2), ("scale", 1)]
    again = changes.cancel(ledger, pack_id, "alice")  # the command read again
    assert again.outcome == "accepted" and not again.created and again.moved == first.moved
    assert ledger.balance("alice") == 10 - 1  # only the delivered image is paid for
    view = ledger.pack(pack_id)
    assert view is not None and (view.status, view.charged) == ("CANCELLED", 1)
    assert {i.image_id: i.status for i in view.images} == {
        "main": "COMPLETED", "detail": "FAILED", "scale": "CANCELLED", "aplus_banner": "CANCELLED"}
    # An outcome after the cancel in the pack's log is not delivered, and not charged.
    late = ledger.record_image(pack_id, "scale", run=0, delivered=True, attempts=1, url="u")
    assert late is not None and not late.created and ledger.balance("alice") == 9
    assert ledger.ledger_sum(pack_id) == -1


def test_cancel_is_refused_for_a_finished_pack_and_another_users(ledger: Ledger) -> None:
    pack_id = accept(ledger)
    assert changes.cancel(ledger, pack_id, "bob").outcome == "not_found"
    for image in ("main", "detail", "scale", "aplus_banner"):
        ledger.record_image(pack_id, image, run=0, delivered=True, attempts=1, url="u")
    refused = changes.cancel(ledger, pack_id, "alice")
    assert refused.outcome == "conflict" and "COMPLETED" in (refused.message or "")


def test_a_pack_cancelled_before_its_request_is_read_is_never_charged(ledger: Ledger) -> None:
    pack_id = str(uuid.uuid4())
    assert changes.cancel(ledger, pack_id, "alice").outcome == "accepted"
    view = ledger.accept_pack(pack_id, "alice", SPECS)  # intake reads the request afterwards
    assert (view.status, view.charged, view.refunded) == ("CANCELLED", 0, 0)
    assert ledger.balance("alice") == 10


def test_regenerate_holds_the_failed_images_again_as_a_new_run(ledger: Ledger) -> None:
    pack_id = accept(ledger)
    for image, ok in (("main", True), ("detail", False), ("scale", False), ("aplus_banner", True)):
        ledger.record_image(pack_id, image, run=0, delivered=ok, attempts=1, url="u" if ok else None, error=None if ok else "x")
    assert ledger.balance("alice") == 7
    busy = changes.regenerate(ledger, "cmd-0", pack_id, "alice", ["main"])
    assert busy.outcome == "conflict" and "main" in (busy.message or "")
    assert changes.regenerate(ledger, "cmd-0", pack_id, "alice", ["nope"]).outcome == "unknown_images"
    assert changes.regenerate(ledger, "cmd-0", pack_id, "bob", None).outcome == "not_found"
    decided = changes.regenerate(ledger, "cmd-1", pack_id, "alice", None)
    assert decided.outcome == "accepted" and decided.run == 1 and decided.accepted is not None
    assert sorted(s.image_id for s in decided.accepted.images) == ["detail", "scale"]
    assert decided.accepted.product.name == "Mug" and ledger.balance("alice") == 5
    again = changes.regenerate(ledger, "cmd-1", pack_id, "alice", None)  # read again: same answer, no new hold
    assert (again.outcome, again.run, again.created) == ("accepted", 1, False) and ledger.balance("alice") == 5
    assert changes.regenerate(ledger, "cmd-2", pack_id, "alice", None).outcome == "conflict"  # one is running
    ledger.record_image(pack_id, "detail", run=0, delivered=True, attempts=1, url="u")  # a stale run: ignored
    ledger.record_image(pack_id, "detail", run=1, delivered=True, attempts=1, url="u")
    view = ledger.record_image(pack_id, "scale", run=1, delivered=False, attempts=3, error="x")
    assert view is not None and (view.status, view.charged) == ("PARTIAL", 4)
    assert ledger.balance("alice") == 6 and ledger.ledger_sum(pack_id) == -4


def test_regenerate_needs_the_credits(ledger: Ledger) -> None:
    pack_id = accept(ledger)
    for image in ("main", "detail", "scale", "aplus_banner"):
        ledger.record_image(pack_id, image, run=0, delivered=False, attempts=1, error="x")
    ledger.accept_pack(str(uuid.uuid4()), "alice", [ImageSpec(image_id="main", kind="main", cost=9)])
    assert ledger.balance("alice") == 1
    short = changes.regenerate(ledger, "cmd-1", pack_id, "alice", None)
    assert short.outcome == "insufficient_credits" and ledger.balance("alice") == 1


def test_the_cancel_handler_tells_generation_and_answers_the_api(ledger: Ledger) -> None:
    pack_id = accept(ledger)
    ledger.record_image(pack_id, "main", run=0, delivered=True, attempts=1, url="u")
    command = PackCancel(pack_id=pack_id, user_id="alice")
    out = handlers.on_image_result(command, ledger, T)
    again = handlers.on_image_result(command, ledger, T)  # read again: the same messages, under the same ids
    assert [(m.topic, decode(m.value).event_id) for m in again] == [(m.topic, decode(m.value).event_id) for m in out]
    by_topic = {m.topic: decode(m.value) for m in out}
    stop, reply = by_topic[T.packs_cancelled], by_topic[T.packs_replies]
    assert isinstance(stop, PackCancelled) and stop.delivered == ["main"]
    assert isinstance(reply, PackCommandResult) and (reply.outcome, reply.command_id) == ("accepted", command.event_id)
    refunds = [decode(m.value, (CreditsChanged,)) for m in out if m.topic == T.credits_events]
    assert sorted(r.amount for r in refunds) == [1, 1, 2]


def test_a_batch_of_outcomes_in_one_transaction_ends_as_one_by_one(ledger: Ledger) -> None:
    """The credits consumer applies a partition's batch of results in one transaction."""
    one_by_one, batched = accept(ledger), accept(ledger)

    def outcomes(pack_id: str) -> list[ImageCompleted | ImageFailed]:
        ok = [ImageCompleted(pack_id=pack_id, user_id="alice", image_id=i, kind=i, attempts=1, url="u", cost=1)
              for i in ("main", "scale")]
        bad = ImageFailed(pack_id=pack_id, user_id="alice", image_id="detail", kind="detail", attempts=3, error="x",
                          error_type="PermanentImageError", cost=1)
        return [ok[0], bad, bad, ok[1], ok[0]]  # with repeats, as a redelivery brings them

    singles = [m for ev in outcomes(one_by_one) for m in handlers.on_image_result(ev, ledger, T)]
    together = handlers.on_image_results(outcomes(batched), ledger, T)
    assert [m.topic for m in singles] == [m.topic for m in together]
    a, b = ledger.pack(one_by_one), ledger.pack(batched)
    assert a is not None and b is not None
    assert (a.status, a.charged, [i.status for i in a.images]) == (b.status, b.charged, [i.status for i in b.images])
    assert ledger.ledger_sum(one_by_one) == ledger.ledger_sum(batched) == -5 + 1
