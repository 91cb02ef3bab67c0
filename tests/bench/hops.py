"""Where a pack's time goes between POST and its terminal event: each step's median over the
packs of a run, from the create times the producers stamp on the records (milliseconds) and
the load client's own clock at both ends. Read after the run, so it costs the run nothing.

The steps follow the critical path of a pack whose images take no time:
POST -> `pack.requested` (api) -> PROCESSING (credits' intake) -> first `image.job`
(generation's fan-out) -> first GENERATING (a job started) -> last image outcome on
`images.results` -> terminal `pack.status` (credits) -> the SSE client has it (notifier)."""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Mapping
from typing import Any

from shared.events import ImageCompleted, ImageFailed, ImageJob, ImageStatus, PackRequested, PackStatus, decode
from tests.harness import RunningStack

TERMINAL = {"COMPLETED", "PARTIAL", "FAILED", "REJECTED", "CANCELLED"}
STEPS = ["api: POST -> pack.requested", "intake: -> PROCESSING", "generation: -> first image.job",
         "generation: -> first GENERATING", "images: -> last outcome", "credits: -> terminal status",
         "notifier: -> SSE client"]


async def hop_times(s: RunningStack, sent: Mapping[str, float], done: Mapping[str, float]) -> dict[str, list[float]]:
    """`sent`, `done`: pack -> wall-clock seconds of its POST and of its terminal SSE event."""
    t = s.topics
    marks: dict[str, dict[str, float]] = {p: {} for p in sent}

    def mark(pack_id: str, step: int, at_ms: int, first: bool = True) -> None:
        steps = marks.get(pack_id)
        if steps is None:
            return
        key = STEPS[step]
        if key not in steps or (first and at_ms / 1000 < steps[key]) or (not first and at_ms / 1000 > steps[key]):
            steps[key] = at_ms / 1000

    for topic in (t.packs_requested, t.packs_status, t.images_jobs, t.images_results):
        for record in await s.records(topic):
            ev: Any = decode(record.value)
            pack_id = str(getattr(ev, "pack_id", ""))
            if isinstance(ev, PackRequested):
                mark(pack_id, 0, record.timestamp)
            elif isinstance(ev, PackStatus) and ev.status == "PROCESSING":
                mark(pack_id, 1, record.timestamp)
            elif isinstance(ev, PackStatus) and ev.status in TERMINAL:
                mark(pack_id, 5, record.timestamp)
            elif isinstance(ev, ImageJob):
                mark(pack_id, 2, record.timestamp)
            elif isinstance(ev, ImageStatus) and ev.image.status == "GENERATING":
                mark(pack_id, 3, record.timestamp)
            elif isinstance(ev, ImageCompleted | ImageFailed):
                mark(pack_id, 4, record.timestamp, first=False)
    hops: dict[str, list[float]] = {step: [] for step in STEPS}
    for pack_id, steps in marks.items():
        if pack_id not in done or len(steps) < len(STEPS) - 1:
            continue
        times = [sent[pack_id], *(steps[step] for step in STEPS[:-1]), done[pack_id]]
        for step, (a, b) in zip(STEPS, itertools.pairwise(times), strict=True):
            hops[step].append((b - a) * 1000)
    return hops


def print_hops(hops: dict[str, list[float]]) -> None:
    packs = min((len(v) for v in hops.values()), default=0)
    if not packs:
        return
    print(f"  where the time goes ({packs} packs; record create times, ms resolution):  p50      p90      p99")
    for step, values in hops.items():
        q = statistics.quantiles(values, n=100) if len(values) > 1 else values * 99
        print(f"    {step:<34} {statistics.median(values):6.1f} ms {q[89]:6.1f} ms {q[98]:6.1f} ms")
