"""Claims on images being made: left by a process that lost the partition mid-generation,
so that the next owner waits for the image instead of paying the provider again."""

from __future__ import annotations

import os
import time
from pathlib import Path

from services.generation.claims import CLAIM_STALE_S, ClaimingImageStore

PACK = "0b6e4d8e-5f2a-4c1e-9d3b-2a7f6c5e4d3c"


def test_a_fresh_claim_is_held_by_its_owner_until_released(tmp_path: Path) -> None:
    store = ClaimingImageStore(tmp_path, "http://api")
    assert not store.held_by_other(PACK, "main", "B")
    store.claim(PACK, "main", "A")
    assert store.held_by_other(PACK, "main", "B")
    assert not store.held_by_other(PACK, "main", "A")  # not "other" for its owner
    assert not store.held_by_other(PACK, "lifestyle", "B")  # claims are per image
    store.release(PACK, "main")
    assert not store.held_by_other(PACK, "main", "B")
    store.refresh_claim(PACK, "main")  # a late refresh does not bring it back
    assert not store.held_by_other(PACK, "main", "B")


def test_a_claim_its_owner_stopped_refreshing_is_ignored(tmp_path: Path) -> None:
    store = ClaimingImageStore(tmp_path, "http://api")
    store.claim(PACK, "main", "A")
    claim = next(tmp_path.rglob(".main.claim"))
    past = time.time() - CLAIM_STALE_S - 1
    os.utime(claim, (past, past))  # A died: nobody refreshed it
    assert not store.held_by_other(PACK, "main", "B")
    store.refresh_claim(PACK, "main")  # A was alive after all
    assert store.held_by_other(PACK, "main", "B")
