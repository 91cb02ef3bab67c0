"""The ledger on a real SQLite file and a real PostgreSQL: every money movement happens once."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest

from services.credits.ledger import ImageOutcome, Ledger
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


# --- a batch of outcomes must end as the same outcomes applied one at a time -------------

def _applied(ledger: Ledger, outcomes: list[ImageOutcome], batched: bool) -> tuple[list[object], int, int]:
    """Accept a pack, apply `outcomes` (their pack id is replaced by the new pack's) either as
    one batch or one call each; returns what each call said, the pack's ledger sum, the balance."""
    pack = str(uuid.uuid4())
    ledger.accept_pack(pack, "alice", SPECS)
    mine = [replace(o, pack_id=pack) for o in outcomes]
    views = ledger.record_images(mine) if batched else [ledger.record_images([o])[0] for o in mine]
    said = [
        None if v is None else (v.status, v.charged, v.money_moved, v.created, v.balance is not None,
                                [(i.image_id, i.status, i.charged, i.run, i.url, i.error) for i in v.images])
        for v in views
    ]
    return said, ledger.ledger_sum(pack), int(ledger.balance("alice") or 0)


def _same_as_one_by_one(ledger: Ledger, outcomes: list[ImageOutcome]) -> list[object]:
    start = ledger.balance("alice") or 0
    single, single_sum, after_single = _applied(ledger, outcomes, batched=False)
    batch, batch_sum, after_batch = _applied(ledger, outcomes, batched=True)
    assert batch == single and batch_sum == single_sum
    assert after_batch - after_single == after_single - start  # both moved the balance alike
    return batch


def failed(image: str, run: int = 0) -> ImageOutcome:
    return ImageOutcome("", image, run, delivered=False, attempts=3, error="x")


def done(image: str, run: int = 0) -> ImageOutcome:
    return ImageOutcome("", image, run, delivered=True, attempts=1, url=f"{image}/{run}")


def test_a_failure_then_its_redelivered_copy_in_one_batch(ledger: Ledger) -> None:
    ledger.grant("alice", 20, "top-up")
    said = _same_as_one_by_one(ledger, [failed("main"), done("main"), failed("main"), done("detail")])
    # refunded, charged again, then the stale failure changes nothing; each view as it was then
    assert [s[2] if s else None for s in said] == [1, -1, 0, 0]  # type: ignore[index]
    first_main = next(i for i in said[0][5] if i[0] == "main")  # type: ignore[index]
    assert first_main[1:3] == ("FAILED", False)


def test_a_delivery_after_a_failure_of_an_earlier_run_in_one_batch(ledger: Ledger) -> None:
    ledger.grant("alice", 20, "top-up")
    outcomes = [failed("aplus_banner"), done("aplus_banner", run=1), failed("aplus_banner", run=0), done("main"),
                done("detail")]
    said = _same_as_one_by_one(ledger, outcomes)
    assert [s[2] if s else None for s in said] == [2, -2, 0, 0, 0]  # type: ignore[index]
    assert said[-1][0] == "COMPLETED"  # type: ignore[index]


def test_a_batch_with_unknown_packs_and_images_answers_none_for_them(ledger: Ledger) -> None:
    pack = str(uuid.uuid4())
    ledger.accept_pack(pack, "alice", SPECS)
    views = ledger.record_images([
        ImageOutcome("no-such-pack", "main", 0, True, 1, url="u"), ImageOutcome(pack, "no-such-image", 0, True, 1, url="u"),
        ImageOutcome(pack, "main", 0, False, 1, error="x"),
    ])
    assert views[:2] == [None, None]
    assert views[2] is not None and (views[2].money_moved, views[2].balance) == (1, 7)


def test_refunds_of_several_packs_of_one_user_in_one_batch_carry_the_running_balance(ledger: Ledger) -> None:
    from services.credits import handlers
    from shared.events import CreditsChanged, ImageCompleted, ImageFailed, decode
    from shared.topics import Topics

    ledger.grant("alice", 10, "top-up")
    packs = [str(uuid.uuid4()) for _ in range(3)]
    for pack in packs:
        ledger.accept_pack(pack, "alice", SPECS)  # 20 - 3 * 4 = 8
    events: list[ImageCompleted | ImageFailed] = []
    for pack in packs:
        events += [
            ImageFailed(pack_id=pack, user_id="alice", image_id="aplus_banner", kind="aplus_banner", attempts=3, error="x",
                        error_type="PermanentImageError", cost=2),
            ImageCompleted(pack_id=pack, user_id="alice", image_id="main", kind="main", attempts=1, url="u", cost=1),
            ImageFailed(pack_id=pack, user_id="alice", image_id="detail", kind="detail", attempts=3, error="x",
                        error_type="PermanentImageError", cost=1),
        ]
    t = Topics()
    out = handlers.on_image_results(events, ledger, t)
    money = [decode(m.value, (CreditsChanged,)) for m in out if m.topic == t.credits_events]
    assert [(m.amount, m.balance) for m in money] == [(2, 10), (1, 11), (2, 13), (1, 14), (2, 16), (1, 17)]
    assert ledger.balance("alice") == 17
    again = handlers.on_image_results(events, ledger, t)  # redelivered: the same events again, nothing moves
    resent = [decode(m.value, (CreditsChanged,)) for m in again if m.topic == t.credits_events]
    assert [(m.event_id, m.amount) for m in resent] == [(m.event_id, m.amount) for m in money]
    assert ledger.balance("alice") == 17
