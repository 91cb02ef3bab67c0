"""Claims on images being made, kept beside them in the image store.

When a rebalance takes a partition away from a process that is still making some of its
images, that process leaves a claim beside each of them, `.<image_id>.claim`, and keeps
it fresh until the image is done. The new owner of the partition, reading those jobs
again, sees the claim and waits for the image instead of paying the provider a second
time. A claim not refreshed for CLAIM_STALE_S belongs to a dead process and is ignored.
(Every generation process shares the store.)"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from shared.images import ImageStore, atomic_write

CLAIM_STALE_S = 15.0  # the owner refreshes every CLAIM_REFRESH_S; three missed refreshes mean it died
CLAIM_REFRESH_S = 5.0


class ClaimingImageStore(ImageStore):
    def claim(self, pack_id: str, image_id: str, owner: str) -> None:
        """Say that `owner` is paying the provider for this image right now."""
        path = self._claim_path(pack_id, image_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, owner.encode())

    def held_by_other(self, pack_id: str, image_id: str, owner: str) -> bool:
        """Another live process is making this image (its claim is fresh)."""
        path = self._claim_path(pack_id, image_id)
        try:
            holder, age = path.read_text(), time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return False
        return holder != owner and age < CLAIM_STALE_S

    def refresh_claim(self, pack_id: str, image_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):  # released meanwhile: nothing to keep
            os.utime(self._claim_path(pack_id, image_id))

    def release(self, pack_id: str, image_id: str) -> None:
        self._claim_path(pack_id, image_id).unlink(missing_ok=True)

    def _claim_path(self, pack_id: str, image_id: str) -> Path:
        target = self.path(pack_id, image_id)
        return target.with_name(f".{image_id}.claim")
