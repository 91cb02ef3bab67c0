"""`packline audit` finds each kind of violation it promises to find (docs/invariants.md,
1 and 2). A real stack makes a pack and is stopped; each test then plants one violation
with real writes, into its own copy of that ledger (SQLAlchemy, the service's own models)
or onto Kafka, runs `packline audit` as an operator would and expects exit 1 with exactly
the lines that name what was planted."""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from services.cli import kafka_io
from services.credits.ledger import Ledger
from services.credits.tables import Account, LedgerEntry
from shared.events import PackRequested, Product
from shared.kafka import Outgoing
from shared.settings import CommonSettings
from tests.harness import RunningStack

pytestmark = pytest.mark.e2e


@dataclass(frozen=True)
class Settled:
    """A stopped stack whose ledger holds one PARTIAL pack: `main` failed and was refunded."""

    env: dict[str, str]
    database: Path
    user: str
    pack_id: str


@dataclass(frozen=True)
class Audit:
    code: int
    violations: list[str]
    output: str


@pytest.fixture(scope="module")
async def settled(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Settled]:
    tmp = tmp_path_factory.mktemp("audited")
    database = tmp / "credits.db"
    with RunningStack.started(kafka_bootstrap, tmp, DATABASE_URL=f"sqlite:///{database}",
                              LOCAL_IMAGE_PERMANENT_FAIL_KINDS="main") as s:
        user = await s.create_user(credits=10)
        pack_id = (await s.post_pack(user)).json()["pack_id"]
        final = (await s.events(pack_id, user))[-1].json()
        assert (final["status"], final["charged"], final["refunded"]) == ("PARTIAL", 5, 1), final
        await asyncio.to_thread(s.stack.stop)  # at rest: nothing consumes or writes from here on
        yield Settled(dict(s.env), database, user, pack_id)


def ledger_copy(settled: Settled, tmp_path: Path) -> tuple[Ledger, str]:
    """A test's own copy of the settled ledger (SQLite's backup API), and its DATABASE_URL."""
    target = tmp_path / "credits.db"
    with sqlite3.connect(settled.database) as src, sqlite3.connect(target) as dst:
        src.backup(dst)
    url = f"sqlite:///{target}"
    return Ledger(url), url


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "services.cli", *args], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=120)


def run_audit(env: dict[str, str], *args: str) -> Audit:
    done = run_cli(env, "audit", *args)
    lines = done.stdout.splitlines()
    return Audit(done.returncode, [line.removeprefix("VIOLATION ") for line in lines if line.startswith("VIOLATION ")],
                 done.stdout + done.stderr)


def test_the_settled_ledger_is_clean(settled: Settled, tmp_path: Path) -> None:
    """The baseline every planted violation below departs from."""
    _, url = ledger_copy(settled, tmp_path)
    audit = run_audit({**settled.env, "DATABASE_URL": url}, "--grace", "0")
    assert audit.code == 0 and audit.violations == [] and "all invariants hold" in audit.output, audit.output


def test_a_double_refund_is_reported(settled: Settled, tmp_path: Path) -> None:
    """`main` refunded a second time under another key, the balance moved with it, as a
    handler that lost its idempotency would do. The pack is then also charged one less
    than it delivered, which audit reports too."""
    ledger, url = ledger_copy(settled, tmp_path)
    p, u = settled.pack_id, settled.user
    with ledger.sessions.begin() as db:
        db.add(LedgerEntry(entry_key=f"refund:{p}:main:0:again", user_id=u, pack_id=p, image_id="main", amount=1,
                           reason="refunded"))
        db.execute(update(Account).where(Account.user_id == u).values(balance=Account.balance + 1))
    audit = run_audit({**settled.env, "DATABASE_URL": url}, "--grace", "0")
    assert audit.code == 1, audit.output
    assert audit.violations == [
        f"ledger drift: pack {p} charged 4 but delivered images cost 5",
        f"double refund: {p}/main refunded 2 more times than recharged",
    ], audit.output


def test_charged_other_than_the_cost_of_delivered_images_is_reported(settled: Settled, tmp_path: Path) -> None:
    """A delivered image charged a second time (a recharge with no refund before it); the
    balance moved with it, so only the pack's charge is wrong."""
    ledger, url = ledger_copy(settled, tmp_path)
    p, u = settled.pack_id, settled.user
    with ledger.sessions.begin() as db:
        db.add(LedgerEntry(entry_key=f"recharge:{p}:detail:0", user_id=u, pack_id=p, image_id="detail", amount=-1,
                           reason="recharged"))
        db.execute(update(Account).where(Account.user_id == u).values(balance=Account.balance - 1))
    audit = run_audit({**settled.env, "DATABASE_URL": url}, "--grace", "0")
    assert audit.code == 1, audit.output
    assert audit.violations == [f"ledger drift: pack {p} charged 6 but delivered images cost 5"], audit.output


def test_a_balance_that_is_not_the_sum_of_its_entries_is_reported(settled: Settled, tmp_path: Path) -> None:
    ledger, url = ledger_copy(settled, tmp_path)
    with ledger.sessions.begin() as db:
        db.execute(update(Account).where(Account.user_id == settled.user).values(balance=Account.balance + 3))
    audit = run_audit({**settled.env, "DATABASE_URL": url}, "--grace", "0")
    assert audit.code == 1, audit.output
    assert audit.violations == [f"balance drift: {settled.user} balance 8 but ledger sums to 5"], audit.output


async def test_a_requested_pack_that_never_reached_the_ledger_is_reported(settled: Settled, tmp_path: Path) -> None:
    """Two pack.requested on topics no credits service reads: one requested 10 minutes
    ago (lost), one just now (within the grace: it may still be on its way)."""
    prefix = f"t{uuid.uuid4().hex[:10]}."
    env = {**settled.env, "TOPIC_PREFIX": prefix, "DATABASE_URL": f"sqlite:///{tmp_path / 'empty.db'}"}
    created = await asyncio.to_thread(run_cli, env, "topics", "create")
    assert created.returncode == 0, created.stdout + created.stderr
    old, young = (PackRequested(pack_id=uuid.uuid4(), user_id="u-lost", product=Product(name="Lamp"),
                                occurred_at=datetime.now(UTC) - timedelta(seconds=age)) for age in (600, 0))
    settings = CommonSettings.model_validate({k.lower(): v for k, v in env.items()})
    async with kafka_io.open_publisher(settings.kafka, "test") as publisher:
        await publisher.send([Outgoing.of(settings.topics.packs_requested, ev, ev.user_id) for ev in (old, young)])
    audit = await asyncio.to_thread(run_audit, env, "--grace", "60")
    assert audit.code == 1, audit.output
    assert len(audit.violations) == 1, audit.output
    lost = rf"lost pack: {old.pack_id} was requested 6\d\ds ago and never reached the ledger"
    assert re.fullmatch(lost, audit.violations[0]), audit.output
