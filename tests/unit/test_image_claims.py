"""Claims on images being made: one process pays the provider, the others wait."""

from __future__ import annotations

import os
import time
from pathlib import Path

from services.generation.storage import CLAIM_STALE_S, ImageStore

PACK = "0b6e4d8e-5f2a-4c1e-9d3b-2a7f6c5e4d3c"


def test_a_fresh_claim_keeps_others_out_until_released(tmp_path: Path) -> None:
    store = ImageStore(tmp_path, "http://api")
    assert store.claim(PACK, "main", "A")
    assert not store.claim(PACK, "main", "B")
    assert store.claim(PACK, "main", "A")  # its own claim, again
    assert store.claim(PACK, "lifestyle", "B")  # claims are per image
    store.release(PACK, "main")
    assert store.claim(PACK, "main", "B")


def test_a_claim_its_owner_stopped_refreshing_is_taken_over(tmp_path: Path) -> None:
    store = ImageStore(tmp_path, "http://api")
    assert store.claim(PACK, "main", "A")
    claim = next(tmp_path.rglob(".main.claim"))
    past = time.time() - CLAIM_STALE_S - 1
    os.utime(claim, (past, past))  # A died: nobody refreshed it
    assert store.claim(PACK, "main", "B")
    assert not store.claim(PACK, "main", "A")  # B holds it now, freshly
    store.refresh_claim(PACK, "main")
    assert time.time() - claim.stat().st_mtime < 5
