"""Where finished images live: var/images/<pack_id>/<image_id>.png, written atomically,
so a file that exists is a complete image (the generation idempotency check).

When a rebalance takes a partition away from a process that is still making some of its
images, that process leaves a claim beside each of them, `.<image_id>.claim`, and keeps
it fresh until the image is done. The new owner of the partition, reading those jobs
again, sees the claim and waits for the image instead of paying the provider a second
time. A claim not refreshed for CLAIM_STALE_S belongs to a dead process and is ignored.
(The store is shared by every generation process and the api.)"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
import uuid
from pathlib import Path

SAFE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
CLAIM_STALE_S = 15.0  # the owner refreshes every CLAIM_REFRESH_S; three missed refreshes mean it died
CLAIM_REFRESH_S = 5.0


class ImageStore:
    def __init__(self, root: Path, public_url: str) -> None:
        self.root = root
        self.public_url = public_url.rstrip("/")

    def path(self, pack_id: str, image_id: str) -> Path:
        if not SAFE.match(image_id) or not SAFE.match(pack_id.replace("-", "_")):
            raise ValueError(f"unsafe image path {pack_id}/{image_id}")
        return self.root / pack_id / f"{image_id}.png"

    def finished(self, pack_id: str, image_id: str) -> int | None:
        """The attempt that made this image, if it exists: its marker is written last."""
        try:
            return int(json.loads(self.path(pack_id, image_id).with_suffix(".json").read_text())["attempt"])
        except (FileNotFoundError, ValueError, KeyError):
            return None

    def save(self, pack_id: str, image_id: str, user_id: str, data: bytes, attempt: int) -> None:
        target = self.path(pack_id, image_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        meta = target.parent / "meta.json"
        if not meta.exists():  # the owner, so the api can refuse everyone else
            _atomic_write(meta, json.dumps({"pack_id": pack_id, "user_id": user_id}).encode())
        _atomic_write(target, data)
        _atomic_write(target.with_suffix(".json"), json.dumps({"attempt": attempt}).encode())

    def claim(self, pack_id: str, image_id: str, owner: str) -> None:
        """Say that `owner` is paying the provider for this image right now."""
        path = self._claim_path(pack_id, image_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(path, owner.encode())

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

    def url(self, pack_id: str, image_id: str) -> str:
        return f"{self.public_url}/v1/images/{pack_id}/{image_id}"


def _atomic_write(target: Path, data: bytes) -> None:
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)
