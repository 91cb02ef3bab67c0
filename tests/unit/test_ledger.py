"""The ledger on a real SQLite file and a real PostgreSQL: every money movement happens once."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from services.credits.ledger import Ledger
from shared.events import ImageSpec

SPECS = [ImageSpec(image_id=k, kind=k, cost=1) for k in ("main", "detail")] + [
    ImageSpec(image_id="aplus_banner", kind="aplus_banner", cost=2)
]


@pytest.fixture
def ledger(database_url: str) -> Ledger:
    ledger = Ledger(database_url)
    ledger.create_schema()
    ledger.create_schema()  # migrations are idempotent
    ledger.create_account("alice", 10)
    return ledger


def test_a_pack_is_debited_once_however_often_it_is_accepted(ledger: Ledger) -> None:
    first = ledger.accept_pack("p1", "alice", SPECS)
    again = ledger.accept_pack("p1", "alice", SPECS)
    assert (first.status, first.created, first.money_moved) == ("PROCESSING", True, -4)
    assert (again.status, again.created, again.money_moved) == ("PROCESSING", False, 0)
    assert ledger.balance("alice") == 6


def test_insufficient_credits_rejects_without_charging(ledger: Ledger) -> None:
    ledger.create_account("bob", 3)
    view = ledger.accept_pack("p2", "bob", SPECS)
    assert view.status == "REJECTED" and "insufficient credits" in (view.reason or "")
    assert ledger.balance("bob") == 3 and view.charged == 0 and view.refunded == 0


def test_unknown_account_is_rejected(ledger: Ledger) -> None:
    assert ledger.accept_pack("p3", "nobody", SPECS).status == "REJECTED"


def test_refund_once_per_failed_image_and_settle(ledger: Ledger) -> None:
    ledger.accept_pack("p1", "alice", SPECS)
    for _ in range(3):  # redelivered failure
        view = ledger.record_image("p1", "aplus_banner", run=0, delivered=False, attempts=5, error="boom")
    assert view is not None and view.status == "PROCESSING"
    assert ledger.balance("alice") == 8
    ledger.record_image("p1", "main", run=0, delivered=True, attempts=1, url="u")
    view = ledger.record_image("p1", "detail", run=0, delivered=True, attempts=1, url="u")
    assert view is not None and (view.status, view.charged, view.refunded) == ("PARTIAL", 2, 2)
    assert ledger.ledger_sum("p1") == -2


def test_a_replayed_image_that_succeeds_is_charged_again_once(ledger: Ledger) -> None:
    ledger.accept_pack("p1", "alice", SPECS)
    for img in ("main", "detail", "aplus_banner"):
        ledger.record_image("p1", img, run=0, delivered=False, attempts=1, error="policy")
    assert ledger.pack("p1").status == "FAILED"  # type: ignore[union-attr]
    assert ledger.balance("alice") == 10
    assert ledger.reopen_image("p1", "main", run=1).status == "PROCESSING"  # type: ignore[union-attr]
    assert not ledger.reopen_image("p1", "main", run=1).created  # type: ignore[union-attr]
    for _ in range(2):
        view = ledger.record_image("p1", "main", run=1, delivered=True, attempts=1, url="u")
    assert view is not None and (view.status, view.charged) == ("PARTIAL", 1)
    assert ledger.balance("alice") == 9
    # A stale failure from the old run cannot refund the delivered image.
    ledger.record_image("p1", "main", run=0, delivered=False, attempts=1, error="late")
    assert ledger.balance("alice") == 9


def test_grants_are_keyed(ledger: Ledger) -> None:
    assert ledger.grant("alice", 5, "cmd-1") == (15, True)
    assert ledger.grant("alice", 5, "cmd-1") == (15, False)


def test_concurrent_writers_never_double_charge_or_overdraw(database_url: str) -> None:
    """Two ledgers (as two credits instances would have) race on the same packs and refunds."""
    first, second = Ledger(database_url), Ledger(database_url)
    first.create_schema()
    first.create_account("carol", 30)
    packs = [f"p{i}" for i in range(20)]  # 20 packs at a net 2 credits each > 30: some must be rejected

    def work(ledger: Ledger) -> None:
        for p in packs:
            ledger.accept_pack(p, "carol", SPECS)
            ledger.record_image(p, "aplus_banner", run=0, delivered=False, attempts=1, error="x")

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(work, [first, second, first, second]))
    views = [first.pack(p) for p in packs]
    accepted = [v for v in views if v and v.status != "REJECTED"]
    # each accepted pack: debit 4, refund 2 => net 2
    assert 0 < len(accepted) < len(packs)
    assert first.balance("carol") == 30 - 2 * len(accepted) >= 0
    assert all(first.ledger_sum(v.pack_id) == -2 for v in accepted)


def test_a_redelivered_result_re_emits_the_same_events(ledger: Ledger) -> None:
    """If credits dies after committing but before publishing, the redelivery must publish."""
    import uuid

    from services.credits import handlers
    from shared.events import ImageCompleted, ImageFailed
    from shared.topics import Topics

    pack = str(uuid.uuid4())
    ledger.accept_pack(pack, "alice", SPECS[:2])
    failed = ImageFailed(pack_id=pack, user_id="alice", image_id="main", kind="main", attempts=1, error="x", error_type="E", cost=1)
    done = ImageCompleted(pack_id=pack, user_id="alice", image_id="detail", kind="detail", attempts=1, url="u", cost=1)
    t = Topics()
    ids = lambda out: [o.value.split(b'"event_id":"')[1][:36] for o in out]  # noqa: E731
    for ev, emitted in ((failed, 2), (done, 1)):  # refund + live status; settled PARTIAL
        first = handlers.on_image_result(ev, ledger, t)
        again = handlers.on_image_result(ev, ledger, t)
        assert len(first) == emitted and ids(first) == ids(again)
    assert ledger.balance("alice") == 9


def test_stalled_packs_are_driven_again_once_per_idle_period(ledger: Ledger) -> None:
    import time
    import uuid

    from services.credits import handlers
    from shared.events import PackRequested
    from shared.topics import Topics

    t = Topics()
    request = PackRequested(pack_id=uuid.uuid4(), user_id="alice", product={"name": "Lamp"}, images=["main", "detail"])
    out = handlers.on_pack_requested(request, ledger, t, 1, 2)
    accepted = next(o for o in out if o.topic == t.packs_accepted)
    time.sleep(0.05)
    again = handlers.redrive(ledger, t, idle_s=0.01)
    assert [o.value for o in again] == [accepted.value]  # the same pack.accepted, same event id
    assert handlers.redrive(ledger, t, idle_s=60) == []  # its idle clock restarted
    for image_id in ("main", "detail"):
        ledger.record_image(str(request.pack_id), image_id, run=0, delivered=True, attempts=1, url="u")
    time.sleep(0.05)
    assert handlers.redrive(ledger, t, idle_s=0.01) == []  # nothing pending: nothing to drive
