"""A 202 pack is visible at once, and another party's backlog does not delay its start:
with 5,000 requests of other users queued on packs.requested, a seller's new pack answers
DRAFT (or already PROCESSING) at once and starts within the turns of the users ahead of it; the flood itself is
processed to the end, each pack charged once."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from shared.events import PackRequested, PackState, PackStatus, Product
from shared.kafka import Outgoing, Publisher
from tests.bench.intake_bench import FAST, flood_then_bystander
from tests.harness import RunningStack

# The flood is 5,000 packs through the whole pipeline.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


async def test_a_new_pack_is_visible_at_once_and_starts_ahead_of_a_flood(kafka_bootstrap: str, tmp_path: Path) -> None:
    with RunningStack.started(kafka_bootstrap, tmp_path, **FAST) as s:
        # 5,000 requests keep intake busy for tens of seconds here; `make bench-intake` runs 20,000.
        figures = await flood_then_bystander(s, requests=5_000, users=50, drain_timeout=600)
        print("\n" + "\n".join(figures.lines()))
        # DRAFT at once; PROCESSING when intake started it before the snapshot's first answer
        # (on a loaded machine that answer can take a few hundred ms).
        assert figures.visible_status in ("DRAFT", "PROCESSING") and figures.visible_ms < 1_000
        assert figures.processing_ms < 2_000
        assert figures.flood_statuses == {"COMPLETED": 5_000}
        # Each flooding user had 100 packs of one credit and 101 credits: one left means charged once each.
        assert await asyncio.gather(*(s.balance(u) for u in figures.flooders)) == [1] * 50


async def test_a_flood_past_the_backlog_limit_is_rejected_with_the_reason(kafka_bootstrap: str, tmp_path: Path) -> None:
    with RunningStack.started(kafka_bootstrap, tmp_path, INTAKE_MAX_QUEUED_PER_USER="5", **FAST) as s:
        user = await s.create_user(credits=300)
        flood = [PackRequested(pack_id=uuid.uuid4(), user_id=user, product=Product(name=f"Item {i}"), images=["main"])
                 for i in range(300)]
        publisher = Publisher(s.kafka, "intake-test")
        await publisher.enqueue([Outgoing.of(s.topics.packs_requested, ev, user) for ev in flood])
        await publisher.flush()
        await publisher.stop()
        ids = {str(ev.pack_id) for ev in flood}
        final: dict[str, PackStatus] = {}
        while len(final) < len(ids):
            for ev in await s.decoded(s.topics.packs_status):
                if isinstance(ev, PackStatus) and ev.status.terminal and str(ev.pack_id) in ids:
                    final[str(ev.pack_id)] = ev
            await asyncio.sleep(1)
        rejected = [ev for ev in final.values() if ev.status == PackState.REJECTED]
        completed = [ev for ev in final.values() if ev.status == PackState.COMPLETED]
        assert rejected and completed and len(rejected) + len(completed) == 300
        assert all("too many pack requests waiting" in (ev.reason or "") for ev in rejected)
        assert all(ev.charged == 0 for ev in rejected)
        assert await s.balance(user) == 300 - len(completed)
