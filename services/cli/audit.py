"""`packline audit`: reconcile the credits ledger with what happened to every pack.

Reads the ledger database (DATABASE_URL) and the topics; prints every violated
invariant (docs/invariants.md) and exits non-zero if there is one."""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Annotated

import typer
from aiokafka import ConsumerRecord

from services.cli import kafka_io
from services.credits.ledger import Ledger
from services.credits.settings import Settings
from shared.events import TERMINAL_PACK, ImageStatus, PackRequested, PackStatus


def pack_log(records: Iterable[ConsumerRecord[bytes, bytes]]) -> tuple[dict[str, str], list[ImageStatus]]:
    """packs.status read back as its readers read it: each pack's last status, and every
    image event. A repeated event id is a copy, skipped: credits sends a redelivered
    request's DRAFT and PROCESSING again under their ids, even after the pack settled."""
    last: dict[str, str] = {}
    images: list[ImageStatus] = []
    seen: set[str] = set()
    for ev in kafka_io.events(records, (PackStatus, ImageStatus)):
        if ev.event_id in seen:
            continue
        seen.add(ev.event_id)
        if isinstance(ev, PackStatus):
            last[str(ev.pack_id)] = ev.status
        elif isinstance(ev, ImageStatus):
            images.append(ev)
    return last, images


def find_violations(s: Settings, grace_s: float) -> tuple[list[str], dict[str, int]]:
    ledger = Ledger(s.database_url)
    ledger.create_schema()
    requested = asyncio.run(kafka_io.read_all(s.kafka, s.topics.packs_requested))
    status_records = asyncio.run(kafka_io.read_all(s.kafka, s.topics.packs_status))
    problems: list[str] = []
    now = time.time()

    last_status, _ = pack_log(status_records)
    view = ledger.audit_view()
    packs, entries, accounts = view.packs, view.entries, view.accounts

    # 1. A 202 pack is never lost: every request reached the ledger and, at rest, a terminal status.
    for ev in kafka_io.events(requested, (PackRequested,)):
        pack_id = str(ev.pack_id)
        age = now - ev.occurred_at.timestamp()
        if pack_id not in packs and age > grace_s:
            problems.append(f"lost pack: {pack_id} was requested {age:.0f}s ago and never reached the ledger")
    for pack_id, pack in packs.items():
        age = now - pack.created_at.timestamp()
        if pack.status not in TERMINAL_PACK and age > grace_s:
            problems.append(f"pack {pack_id} still {pack.status} after {age:.0f}s")
        elif pack.status in TERMINAL_PACK and last_status.get(pack_id) != pack.status and age > grace_s:
            problems.append(f"pack {pack_id} is {pack.status} in the ledger but {last_status.get(pack_id)} on packs.status")

    # 2. Money: for every pack at rest, net charge == cost of the images delivered.
    net: dict[str, int] = defaultdict(int)
    for e in entries:
        if e.pack_id:
            net[e.pack_id] -= e.amount
    for pack_id, pack in packs.items():
        if pack.status not in TERMINAL_PACK:
            continue
        delivered = sum(i.cost for i in pack.images if i.status == "COMPLETED")
        if net[pack_id] != delivered:
            problems.append(f"ledger drift: pack {pack_id} charged {net[pack_id]} but delivered images cost {delivered}")

    # No double debit or double refund: one debit per pack; per image, refunds and
    # recharges alternate, so they never differ by more than one.
    debits = Counter(e.pack_id for e in entries if e.reason == "debited")
    problems += [f"double debit: pack {p} debited {n} times" for p, n in debits.items() if n > 1]
    moves: dict[tuple[str, str], int] = defaultdict(int)
    for e in entries:
        if e.reason in ("refunded", "recharged") and e.pack_id and e.image_id:
            moves[(e.pack_id, e.image_id)] += 1 if e.reason == "refunded" else -1
    problems += [f"double refund: {p}/{i} refunded {n} more times than recharged" for (p, i), n in moves.items() if n > 1]

    # Balances equal the sum of their ledger entries.
    sums: dict[str, int] = defaultdict(int)
    for e in entries:
        sums[e.user_id] += e.amount
    problems += [
        f"balance drift: {a.user_id} balance {a.balance} but ledger sums to {sums[a.user_id]}"
        for a in accounts if a.balance != sums[a.user_id]
    ]
    figures = {
        "packs": len(packs), "terminal": sum(p.status in TERMINAL_PACK for p in packs.values()),
        "ledger_entries": len(entries), "accounts": len(accounts),
    }
    return problems, figures


def audit(
    grace: Annotated[float, typer.Option(help="packs younger than this many seconds may still be in flight")] = 300.0,
) -> None:
    """Reconcile the ledger with the packs; print every violated invariant; exit 1 if any."""
    problems, figures = find_violations(Settings(), grace)
    typer.echo(f"audited at {datetime.now(UTC).isoformat()}: " + ", ".join(f"{k} {v}" for k, v in figures.items()))
    for p in problems:
        typer.echo(f"VIOLATION {p}")
    if problems:
        raise typer.Exit(1)
    typer.echo("all invariants hold")
