"""Claims on images being made: left by a process that lost the partition mid-generation,
so that the next owner waits for the image instead of paying the provider again. The same
claims run on S3 in tests/e2e/test_s3_images.py."""

from __future__ import annotations

from pathlib import Path

from services.generation.claims import CLAIM_STALE_S, Claims
from shared.images import LocalImageStore

PACK = "0b6e4d8e-5f2a-4c1e-9d3b-2a7f6c5e4d3c"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_a_fresh_claim_is_held_by_its_owner_until_released(tmp_path: Path) -> None:
    store = LocalImageStore(tmp_path, "http://api")
    a, b = Claims(store, "A"), Claims(store, "B")
    assert not await b.held_by_other(PACK, "main")
    await a.claim(PACK, "main")
    assert await b.held_by_other(PACK, "main")
    assert not await a.held_by_other(PACK, "main")  # not "other" for its owner
    assert not await b.held_by_other(PACK, "lifestyle")  # claims are per image
    await a.release(PACK, "main")
    assert not await b.held_by_other(PACK, "main")
    await a.release(PACK, "main")  # releasing twice is harmless


async def test_a_claim_its_owner_stopped_refreshing_is_ignored(tmp_path: Path) -> None:
    store, clock = LocalImageStore(tmp_path, "http://api"), Clock()
    a, b = Claims(store, "A", clock), Claims(store, "B", clock)
    await a.claim(PACK, "main")
    clock.now += CLAIM_STALE_S - 1
    assert await b.held_by_other(PACK, "main")
    clock.now += 2  # A died: nobody refreshed it
    assert not await b.held_by_other(PACK, "main")
    await a.refresh(PACK, "main")  # A was alive after all
    assert await b.held_by_other(PACK, "main")


async def test_the_refresh_time_is_inside_the_claim_not_a_file_time(tmp_path: Path) -> None:
    store, clock = LocalImageStore(tmp_path, "http://api"), Clock()
    await Claims(store, "A", clock).claim(PACK, "main")
    assert await store.get_claim(PACK, "main") == b'{"owner": "A", "refreshed_at": 1000000.0, "run": 0, "attempt": 0}'
    await store.put_claim(PACK, "main", b"not json")  # unreadable: nobody to wait for
    assert not await Claims(store, "B", clock).held_by_other(PACK, "main")


async def test_an_answered_attempt_is_held_by_nobody_and_answers_itself_and_earlier_ones(tmp_path: Path) -> None:
    store = LocalImageStore(tmp_path, "http://api")
    a, b = Claims(store, "A"), Claims(store, "B")
    await a.claim(PACK, "main", run=0, attempt=2)
    assert await b.held_by_other(PACK, "main")
    await a.answer(PACK, "main", run=0, attempt=2)
    assert not await b.held_by_other(PACK, "main")
    claim = await b.read(PACK, "main")
    assert claim is not None and claim.answers(0, 2) and claim.answers(0, 1)
    assert not claim.answers(0, 3) and not claim.answers(1, 1)  # a later attempt, another run
