"""Where finished images live: var/images/<pack_id>/<image_id>.png, written atomically,
so a file that exists is a complete image (the generation idempotency check).

Beside an image being made lies its claim, `.<image_id>.claim`: the generation process
that is paying the provider for it, kept fresh while it works. After a rebalance hands the
job to another process, that process sees the fresh claim and waits for the image instead
of paying for it a second time. A claim not refreshed for CLAIM_STALE_S belongs to a dead
process and is taken over. (The store is shared by every generation process and the api.)"""

from __future__ import annotations

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

    def claim(self, pack_id: str, image_id: str, owner: str) -> bool:
        """Take the right to generate this image: False while another live process holds it."""
        path = self._claim_path(pack_id, image_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder, age = path.read_text(), time.time() - path.stat().st_mtime
            except FileNotFoundError:
                return False  # released just now: the caller looks again
            if holder != owner and age < CLAIM_STALE_S:
                return False
            _atomic_write(path, owner.encode())  # ours already, or its owner is gone
            return True
        with os.fdopen(fd, "w") as fh:
            fh.write(owner)
        return True

    def refresh_claim(self, pack_id: str, image_id: str) -> None:
        self._claim_path(pack_id, image_id).touch()

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
