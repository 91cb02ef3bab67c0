"""`packline audit` on a ledger with three violations planted at once, each in its own
pack or account, written straight into the ledger database (the only way to make a
violation exist: the services never write one). The real CLI reports each of them on a
line of its own and exits 1."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import RunningStack

pytestmark = pytest.mark.e2e


def audit(env: dict[str, str]) -> tuple[int, list[str], str]:
    done = subprocess.run([sys.executable, "-m", "services.cli", "audit", "--grace", "0"], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=120)
    violations = [line.removeprefix("VIOLATION ") for line in done.stdout.splitlines() if line.startswith("VIOLATION ")]
    return done.returncode, violations, done.stdout + done.stderr


async def test_a_double_refund_a_lost_pack_and_a_balance_drift_are_each_reported(kafka_bootstrap: str, tmp_path: Path) -> None:
    database = tmp_path / "credits.db"
    with RunningStack.started(kafka_bootstrap, tmp_path, DATABASE_URL=f"sqlite:///{database}",
                              LOCAL_IMAGE_PERMANENT_FAIL_KINDS="main") as s:
        packs: dict[str, str] = {}
        for name in ("refunded", "lost", "drifted"):
            user = await s.create_user(credits=10)
            pack_id = (await s.post_pack(user)).json()["pack_id"]
            final = (await s.events(pack_id, user))[-1].json()
            assert (final["status"], final["charged"], final["refunded"]) == ("PARTIAL", 5, 1), final
            packs[name] = pack_id
        await asyncio.to_thread(s.stack.stop)  # at rest: nothing writes to the ledger from here on
        env = dict(s.env)

    code, violations, output = audit(env)
    assert code == 0 and violations == [], output  # the baseline: the services leave no violation

    with sqlite3.connect(database) as db:
        users = {name: db.execute("SELECT user_id FROM packs WHERE pack_id = ?", (p,)).fetchone()[0] for name, p in packs.items()}
        # `main` of one pack refunded a second time, under another key, and the balance with it.
        p, u = packs["refunded"], users["refunded"]
        db.execute("INSERT INTO ledger_entries (entry_key, user_id, pack_id, image_id, amount, reason, created_at) "
                   "VALUES (?, ?, ?, 'main', 1, 'refunded', CURRENT_TIMESTAMP)", (f"refund:{p}:main:0:again", u, p))
        db.execute("UPDATE accounts SET balance = balance + 1 WHERE user_id = ?", (u,))
        # A pack the ledger lost: requested (on packs.requested), gone from the ledger.
        db.execute("DELETE FROM pack_images WHERE pack_id = ?", (packs["lost"],))
        db.execute("DELETE FROM packs WHERE pack_id = ?", (packs["lost"],))
        # A balance that is not the sum of its entries.
        db.execute("UPDATE accounts SET balance = balance + 3 WHERE user_id = ?", (users["drifted"],))

    code, violations, output = audit(env)
    assert code == 1, output
    lost = [v for v in violations if v.startswith(f"lost pack: {packs['lost']} was requested ")]
    assert len(lost) == 1 and lost[0].endswith("ago and never reached the ledger"), output
    assert sorted(v for v in violations if v not in lost) == sorted([
        f"double refund: {packs['refunded']}/main refunded 2 more times than recharged",
        # What a double refund does to its pack: charged one less than it delivered.
        f"ledger drift: pack {packs['refunded']} charged 4 but delivered images cost 5",
        f"balance drift: {users['drifted']} balance 8 but ledger sums to 5",
    ]), output
