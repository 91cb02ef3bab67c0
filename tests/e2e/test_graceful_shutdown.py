"""SIGTERM on a generation process with images in flight loses none and makes
none twice. Within GENERATION_SHUTDOWN_GRACE_S the images in flight finish before the
process exits; past it, unfinished jobs are not committed and the restarted process takes
them up. What the provider was paid for is read from the local backend's call log."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from services.cli import sse
from shared.events import LISTING_KINDS
from tests.harness import RunningStack

pytestmark = pytest.mark.e2e


def brief(calls: list[dict[str, Any]]) -> list[tuple[str, int, str, int]]:
    return [(c["image_id"], c["attempt"], c["outcome"], c["pid"]) for c in calls]


def per_image(calls: list[dict[str, Any]]) -> Counter[tuple[str, str]]:
    """(image, how the call ended) -> number of provider calls."""
    return Counter((c["image_id"], c["outcome"]) for c in calls)


@pytest.mark.parametrize(("grace_s", "finished_before_exit"), [("10", 6), ("0", 0)], ids=["finish", "hand-back"])
async def test_sigterm_mid_generation(kafka_bootstrap: str, tmp_path: Path, grace_s: str, finished_before_exit: int) -> None:
    with RunningStack.started(
        kafka_bootstrap, tmp_path, LOCAL_IMAGE_LATENCY_MS="4000", GENERATION_SHUTDOWN_GRACE_S=grace_s,
    ) as s:
        user = await s.create_user(credits=10)
        pack_id = (await s.post_pack(user)).json()["pack_id"]
        generating: set[str] = set()
        async with asyncio.timeout(60):
            async for ev in sse.follow(f"{s.notifier}/v1/packs/{pack_id}/events", s.auth(user), last_event_id="0", retries=0):
                if ev.event == "image" and ev.json()["status"] == "GENERATING":
                    generating.add(ev.json()["image_id"])
                    if len(generating) == len(LISTING_KINDS):
                        break  # GENERATING goes out as its provider call starts: all six calls are in flight
        first = s.stack.procs["generation"]
        s.stack.signal("generation", signal.SIGTERM)
        await asyncio.to_thread(first.wait, 60)
        assert len(await s.completed_images(pack_id)) == finished_before_exit
        before = s.provider_calls(pack_id)
        s.stack.start("generation")
        final = (await s.events(pack_id, user, timeout=120))[-1].json()
        assert final["status"] == "COMPLETED" and final["charged"] == 6
        assert await s.balance(user) == 4
        completed = await s.completed_images(pack_id)
        assert len(completed) == 6 and all(len(ids) == 1 for ids in completed.values())

        calls = s.provider_calls(pack_id)
        after = calls[len(before):]  # the log is append-only: these are the restarted process's calls
        assert all(c["pid"] == first.pid for c in before) and all(c["pid"] != first.pid for c in after), (first.pid, brief(calls))
        assert all(c["attempt"] == 1 for c in calls), brief(calls)
        if finished_before_exit:
            # Within the grace: each image was made by one call of the stopping process, and
            # the restarted process found them made and paid for nothing.
            assert per_image(before) == dict.fromkeys(((k, "ok") for k in LISTING_KINDS), 1), brief(before)
            assert per_image(after) == {}, brief(after)
        else:
            # Past the grace (0 s): each of the six calls in flight was cancelled mid-call by
            # the stopping process, which delivered nothing; the restarted process made each
            # image with exactly one call, at the same attempt. Two calls per image, one of
            # them for a delivered image.
            assert per_image(before) == dict.fromkeys(((k, "cancelled") for k in LISTING_KINDS), 1), brief(before)
            assert per_image(after) == dict.fromkeys(((k, "ok") for k in LISTING_KINDS), 1), brief(after)
