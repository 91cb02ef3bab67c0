"""Claims on images being made, kept in the image store beside them (`.<image_id>.claim`,
shared/images.py), so every generation process sees them, on one host or many, with a local
directory or S3.

Every image is claimed as the provider starts on it (in the background, off the call's
path), rewritten every CLAIM_REFRESH_S, and released in the step that saves the image:
deleted after its marker, or on a directory renamed into the marker, which it can be
since it names the same attempt (jobs.py, shared/images.py). When a rebalance takes a
partition away from a process that is
still making some of its images, that process makes sure their claims are written before
the partition goes. The new owner of the partition, reading those jobs again, sees the
claim and waits for the image instead of paying the provider a second time. A claim whose
refresh time is older than CLAIM_STALE_S belongs to a dead process and is ignored.

A call that fails leaves no image to find, so its claim is not deleted but marked answered
(`"answered": true`, with the run and attempt): a next owner reading that attempt again knows
its outcome (a retry, or the failure) is already on Kafka and drops it instead of paying
for the same attempt twice. The next attempt's claim replaces the mark.

Every call is claimed from its start, however short. Claiming only the calls that have
lasted a while (say half a second) was weighed and refused. It would spare the writes only
for calls shorter than that, which real images (30-60 s) never are, and it reopens the
window that claiming at the start closed: a process cut off from the group without being
told (a broker restart) keeps starting jobs that its partitions' next owner is reading
again; a job the next owner reaches less than that delay after the cut-off process started
it shows neither a claim nor an image, and the provider is paid twice. With calls shorter
than the delay (the chaos run's 300 ms), no call would be claimed at all: the state in which
the chaos run once counted an image paid twice.

A claim is a small JSON object: `{"owner": ..., "refreshed_at": <epoch seconds>, "run": ...,
"attempt": ...}`. The time is inside, written by the owner, not a file time or the store's Last-Modified: the same on a
directory and on S3. The writes are plain, unconditional puts (s3proxy and several other
S3-compatible servers ignore `If-None-Match`). That is safe because a claim has one writer:
only the process making the image writes, refreshes and deletes its claim; every other
process only reads it. See docs/architecture.md, "Paying the provider once per image"."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from shared.images import ImageStore

CLAIM_STALE_S = 15.0  # the owner refreshes every CLAIM_REFRESH_S; three missed refreshes mean it died
CLAIM_REFRESH_S = 5.0


@dataclass(frozen=True)
class Claim:
    owner: str
    refreshed_at: float
    run: int = 0
    attempt: int = 0
    answered: bool = False

    def answers(self, run: int, attempt: int) -> bool:
        """This attempt (or a later one of the same run) was made and its outcome sent."""
        return self.answered and self.run == run and self.attempt >= attempt


class Claims:
    """The claims of one generation process, `owner`."""

    def __init__(self, store: ImageStore, owner: str, clock: Callable[[], float] = time.time) -> None:
        self.store, self.owner, self.clock = store, owner, clock

    async def claim(self, pack_id: str, image_id: str, run: int = 0, attempt: int = 0) -> None:
        """Say that this process is paying the provider for this image right now (and again
        to refresh the claim)."""
        await self._put(pack_id, image_id, {"run": run, "attempt": attempt})

    refresh = claim

    async def answer(self, pack_id: str, image_id: str, run: int, attempt: int) -> None:
        """This attempt was made and failed, and its outcome is on Kafka."""
        await self._put(pack_id, image_id, {"run": run, "attempt": attempt, "answered": True})

    async def read(self, pack_id: str, image_id: str) -> Claim | None:
        raw = await self.store.get_claim(pack_id, image_id)
        if raw is None:
            return None
        try:
            body = json.loads(raw)
            return Claim(str(body["owner"]), float(body["refreshed_at"]), int(body.get("run", 0)),
                         int(body.get("attempt", 0)), bool(body.get("answered", False)))
        except (ValueError, KeyError, TypeError, AttributeError):
            return None  # unreadable: nobody can be waited for

    def held(self, claim: Claim | None) -> bool:
        """Another live process is making this image (its claim is fresh)."""
        return (claim is not None and not claim.answered and claim.owner != self.owner
                and self.clock() - claim.refreshed_at < CLAIM_STALE_S)

    async def held_by_other(self, pack_id: str, image_id: str) -> bool:
        return self.held(await self.read(pack_id, image_id))

    async def release(self, pack_id: str, image_id: str) -> None:
        await self.store.delete_claim(pack_id, image_id)

    async def _put(self, pack_id: str, image_id: str, fields: dict[str, object]) -> None:
        body = {"owner": self.owner, "refreshed_at": self.clock(), **fields}
        await self.store.put_claim(pack_id, image_id, json.dumps(body).encode())
