"""SIGTERM on a generation process with images in flight loses none and makes
none twice. Within GENERATION_SHUTDOWN_GRACE_S the images in flight finish before the
process exits; past it, unfinished jobs are not committed and the restarted process takes
them up."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from services.cli import sse
from tests.harness import RunningStack

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize(("grace_s", "finished_before_exit"), [("10", 6), ("0", 0)], ids=["finish", "hand-back"])
async def test_sigterm_mid_generation(kafka_bootstrap: str, tmp_path: Path, grace_s: str, finished_before_exit: int) -> None:
    with RunningStack.started(
        kafka_bootstrap, tmp_path, LOCAL_IMAGE_LATENCY_MS="4000", GENERATION_SHUTDOWN_GRACE_S=grace_s,
    ) as s:
        user = await s.create_user(credits=10)
        pack_id = (await s.post_pack(user)).json()["pack_id"]
        async for ev in sse.follow(f"{s.notifier}/v1/packs/{pack_id}/events", s.auth(user), last_event_id="0", retries=0):
            if ev.event == "image" and ev.json()["status"] == "GENERATING":
                break  # images are in flight now
        s.stack.signal("generation", signal.SIGTERM)
        await asyncio.to_thread(s.stack.procs["generation"].wait, 60)
        assert len(await s.completed_images(pack_id)) == finished_before_exit
        s.stack.start("generation")
        final = (await s.events(pack_id, user, timeout=120))[-1].json()
        assert final["status"] == "COMPLETED" and final["charged"] == 6
        assert await s.balance(user) == 4
        completed = await s.completed_images(pack_id)
        assert len(completed) == 6 and all(len(ids) == 1 for ids in completed.values())

