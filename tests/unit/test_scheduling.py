"""The image-job scheduler's pure parts: fair order, safe commit points, provider pacing."""

from __future__ import annotations

import asyncio

from services.generation.scheduling import ProviderLimiter
from shared.fairness import FairQueue, OffsetTracker


def drain(q: FairQueue[str]) -> list[str]:
    out = []
    while (item := q.pop()) is not None:
        out.append(item)
    return out


def test_users_take_turns_and_each_keeps_its_order() -> None:
    q: FairQueue[str] = FairQueue()
    for i in range(300):
        q.put("big", f"big-{i}")
    for i in range(6):
        q.put("small", f"small-{i}")
    order = drain(q)
    # The small user's six jobs are among the first twelve served, not after 300.
    assert [order.index(f"small-{i}") for i in range(6)] == [1, 3, 5, 7, 9, 11]
    assert [j for j in order if j.startswith("big")] == [f"big-{i}" for i in range(300)]
    assert len(q) == 0 and q.users == 0


def test_a_user_who_arrives_later_goes_to_the_back_of_the_rotation() -> None:
    q: FairQueue[str] = FairQueue()
    for user in ("a", "b"):
        for i in range(3):
            q.put(user, f"{user}{i}")
    assert q.pop() == "a0"
    q.put("c", "c0")
    assert drain(q) == ["b0", "a1", "c0", "b1", "a2", "b2"]


def test_removing_a_partition_s_jobs_keeps_the_rest() -> None:
    q: FairQueue[tuple[int, str]] = FairQueue()
    for i in range(6):
        q.put("a" if i % 2 else "b", (i % 3, f"j{i}"))
    assert sorted(q.remove(lambda item: item[0] == 0)) == [(0, "j0"), (0, "j3")]
    assert len(q) == 4
    remaining = []
    while (item := q.pop()) is not None:
        remaining.append(item)
    assert all(p != 0 for p, _ in remaining) and len(remaining) == 4


async def test_get_waits_for_a_job() -> None:
    q: FairQueue[str] = FairQueue()
    getter = asyncio.create_task(q.get())
    await asyncio.sleep(0.01)
    assert not getter.done()
    q.put("u", "job")
    assert await asyncio.wait_for(getter, 1) == "job"


def test_commit_point_stops_at_the_oldest_unfinished_job() -> None:
    t: OffsetTracker[str] = OffsetTracker()
    for offset in range(10, 15):
        t.fetched("p", offset)
    assert t.committable() == {"p": 10}
    for offset in (11, 12, 14):  # finished out of order; 10 (a slow image) still running
        t.done("p", offset)
    assert t.committable() == {"p": 10}
    t.committed({"p": 10})
    assert t.committable() == {}  # nothing new to commit
    t.done("p", 10)
    assert t.committable() == {"p": 13}  # 13 is still running
    t.done("p", 13)
    assert t.committable() == {"p": 15}
    assert t.pending() == 0


def test_commit_points_only_for_owned_partitions_and_forgotten_ones_restart() -> None:
    t: OffsetTracker[str] = OffsetTracker()
    t.fetched("p0", 5)
    t.fetched("p1", 7)
    t.done("p1", 7)
    assert t.committable(owned={"p1"}) == {"p1": 8}
    t.forget(["p0"])
    t.done("p0", 5)  # a job of a revoked partition finishing late changes nothing
    assert t.committable() == {"p1": 8}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_provider_calls_are_spaced_by_the_limit() -> None:
    clock = Clock()
    limiter = ProviderLimiter(per_minute=60, clock=clock)  # one a second
    waits = [limiter.reserve() for _ in range(4)]
    assert waits == [0.0, 1.0, 2.0, 3.0]
    clock.now += 10  # idle time does not bank more than the burst
    assert [limiter.reserve() for _ in range(2)] == [0.0, 1.0]


def test_burst_then_steady_rate() -> None:
    clock = Clock()
    limiter = ProviderLimiter(per_minute=120, burst=3, clock=clock)
    assert [limiter.reserve() for _ in range(5)] == [0.0, 0.0, 0.0, 0.5, 1.0]


def test_the_limit_is_split_by_partition_share() -> None:
    clock = Clock()
    limiter = ProviderLimiter(per_minute=60, clock=clock)
    limiter.set_share(2, 6)  # a third of the partitions: a third of the rate
    assert [limiter.reserve() for _ in range(3)] == [0.0, 3.0, 6.0]
    limiter.set_share(0, 6)  # none left: still finishes what it holds, at the smallest share
    assert limiter.share == 1 / 6


def test_no_limit_never_waits() -> None:
    limiter = ProviderLimiter(per_minute=0)
    assert all(limiter.reserve() == 0 for _ in range(1000))
