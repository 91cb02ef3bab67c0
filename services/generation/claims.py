"""Claims on images being made, kept in the image store beside them (`.<image_id>.claim`,
shared/images.py), so every generation process sees them, on one host or many, with a local
directory or S3.

When a rebalance takes a partition away from a process that is still making some of its
images, that process writes a claim for each of them and rewrites it every CLAIM_REFRESH_S
until the image is done. The new owner of the partition, reading those jobs again, sees the
claim and waits for the image instead of paying the provider a second time. A claim whose
refresh time is older than CLAIM_STALE_S belongs to a dead process and is ignored.

A claim is a small JSON object: `{"owner": ..., "refreshed_at": <epoch seconds>}`. The time
is inside, written by the owner, not a file time or the store's Last-Modified: the same on a
directory and on S3. The writes are plain, unconditional puts (s3proxy and several other
S3-compatible servers ignore `If-None-Match`). That is safe because a claim has one writer:
only the process making the image writes, refreshes and deletes its claim; every other
process only reads it. See docs/architecture.md, "Paying the provider once per image"."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from shared.images import ImageStore

CLAIM_STALE_S = 15.0  # the owner refreshes every CLAIM_REFRESH_S; three missed refreshes mean it died
CLAIM_REFRESH_S = 5.0


class Claims:
    """The claims of one generation process, `owner`."""

    def __init__(self, store: ImageStore, owner: str, clock: Callable[[], float] = time.time) -> None:
        self.store, self.owner, self.clock = store, owner, clock

    async def claim(self, pack_id: str, image_id: str) -> None:
        """Say that this process is paying the provider for this image right now (and again
        to refresh the claim)."""
        body = {"owner": self.owner, "refreshed_at": self.clock()}
        await self.store.put_claim(pack_id, image_id, json.dumps(body).encode())

    refresh = claim

    async def held_by_other(self, pack_id: str, image_id: str) -> bool:
        """Another live process is making this image (its claim is fresh)."""
        raw = await self.store.get_claim(pack_id, image_id)
        if raw is None:
            return False
        try:
            body = json.loads(raw)
            holder, refreshed_at = str(body["owner"]), float(body["refreshed_at"])
        except (ValueError, KeyError, TypeError):
            return False  # unreadable: nobody can be waited for
        return holder != self.owner and self.clock() - refreshed_at < CLAIM_STALE_S

    async def release(self, pack_id: str, image_id: str) -> None:
        await self.store.delete_claim(pack_id, image_id)
