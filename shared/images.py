"""Where finished images live, and the one module that knows how they are stored:
<root>/<pack_id>/<image_id>.png, each written atomically, so a file that exists is a
complete image; beside it <image_id>.json names the attempt that made it (written last,
generation's idempotency check), and the pack's meta.json names its owner (so the api
refuses everyone else). Generation writes; the api reads."""

from __future__ import annotations

import json
import os
import re
import uuid
from pathlib import Path

SAFE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


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
            atomic_write(meta, json.dumps({"pack_id": pack_id, "user_id": user_id}).encode())
        atomic_write(target, data)
        atomic_write(target.with_suffix(".json"), json.dumps({"attempt": attempt}).encode())

    def owned_file(self, pack_id: str, image_id: str, user_id: str) -> Path | None:
        """The image's file if it exists and `user_id` owns its pack (else None: someone
        else's image is indistinguishable from a missing one)."""
        try:
            path = self.path(pack_id, image_id)
            owner = json.loads((path.parent / "meta.json").read_text())["user_id"]
        except (ValueError, OSError, KeyError, TypeError):
            return None
        return path if owner == user_id and path.is_file() else None

    def url(self, pack_id: str, image_id: str) -> str:
        return f"{self.public_url}/v1/images/{pack_id}/{image_id}"


def atomic_write(target: Path, data: bytes) -> None:
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)
