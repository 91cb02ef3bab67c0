"""Runs one image job: GENERATING -> backend -> store -> COMPLETED, or hands the failure
to the retry policy. It never sleeps on a retry: the job leaves through a retry topic.
It pays the provider once per image: a finished image is reported again, a copy of a
running job waits for it, and every image is claimed while it is made (claims.py), so that
a next owner of its partition waits too. Only the process making an image writes its
claim; the others only read it."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import uuid
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from prometheus_client import Counter

from services.generation import handlers
from services.generation.backends import ImageBackend
from services.generation.claims import CLAIM_REFRESH_S, Claims
from services.generation.observe import provider_call
from services.generation.scheduling import CancelledPacks, ProviderLimiter
from shared.errors import BrokerUnavailable
from shared.events import ImageJob
from shared.images import ImageStore
from shared.kafka import Outgoing, Publisher
from shared.topics import Topics

log = logging.getLogger("packline.generation")
IMAGES = Counter("packline_images_total", "image jobs by outcome", ["outcome"])
# Runs remembered as finished (finished_here): minutes of work at thousands of images/s, a
# few MiB. A copy read after its run was forgotten still pays nothing (the store has the image).
FINISHED_KEPT = 50_000


class JobRunner:
    def __init__(
        self, backend: ImageBackend, store: ImageStore, publisher: Publisher, topics: Topics,
        policy: handlers.RetryPolicy, limiter: ProviderLimiter | None = None, rng: random.Random | None = None,
    ) -> None:
        self.backend, self.store, self.publisher, self.topics = backend, store, publisher, topics
        self.policy = policy
        self.limiter = limiter or ProviderLimiter(0)
        self.rng = rng or random.Random()
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"  # whose claims are whose
        self.claims = Claims(store, self.owner)
        self.making: set[tuple[str, str, int]] = set()  # decided to pay the provider (not waiting on a claim)
        self.claimed: dict[tuple[str, str, int], int] = {}  # claimed image -> the attempt being made
        self.answered: set[tuple[str, str, int]] = set()  # failed, and the outcome sent: no image to find
        self._claims_lock = asyncio.Lock()  # a refresh never lands after its claim's release
        self._keeping: asyncio.Task[None] | None = None
        self._claiming: dict[tuple[str, str, int], asyncio.Task[None]] = {}
        # job -> (its attempt, a future resolved with True when it ended with its effects published)
        self.in_flight: dict[tuple[str, str, int], tuple[int, asyncio.Future[bool]]] = {}
        # Recently ended runs with their effects published -> the attempt: a copy read after
        # the run (a job started early, a partition read again) is settled without a call.
        self.finished: OrderedDict[tuple[str, str, int], int] = OrderedDict()
        self.calls: dict[tuple[str, str, int], asyncio.Task[bytes]] = {}  # provider calls in flight
        self.cancelled = CancelledPacks()
        self._discarding: set[asyncio.Task[None]] = set()

    async def run(self, job: ImageJob, source_topic: str, headers: Any) -> None:
        """One job, read for the first time or again (a partition taken over from a process
        that may still be making the image, see `claim_running`; or a copy)."""
        if self.finished_here(job) or await self.settled_by_running(job):
            return
        key = _key(job)
        finished: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.in_flight[key] = (job.attempt, finished)
        ok = False
        try:
            await self._run(job, source_topic, list(headers or ()))
            ok = True
        finally:
            try:
                self.making.discard(key)
                claiming = self._claiming.pop(key, None)
                if claiming is not None:
                    await asyncio.gather(claiming, return_exceptions=True)
                if key in self.claimed or key in self.answered:  # a fast failure may finish before its claim
                    await self._release(key, job.attempt)
            finally:
                # Only once the claim says how the attempt ended: a copy read meanwhile waits
                # for this run, one read later finds the image or the answered mark.
                del self.in_flight[key]
                if ok:
                    self._remember(key, job.attempt)
                finished.set_result(ok)

    def finished_here(self, job: ImageJob) -> bool:
        """Whether a run of this job's image, of this attempt or a later one, ended in this
        process lately with its effects published (acknowledged by Kafka)."""
        attempt = self.finished.get(_key(job))
        return attempt is not None and attempt >= job.attempt

    def _remember(self, key: tuple[str, str, int], attempt: int) -> None:
        self.finished[key] = max(attempt, self.finished.pop(key, attempt))
        if len(self.finished) > FINISHED_KEPT:
            self.finished.popitem(last=False)

    def is_running(self, job: ImageJob) -> bool:
        """Whether a run of this job's image (any attempt) is in flight in this process."""
        return _key(job) in self.in_flight

    async def settled_by_running(self, job: ImageJob) -> bool:
        """Waits for the runs of this job's image in flight here; True when one of them, of
        this attempt or a later one, ended with its effects published: nothing is left to do.

        A redelivered copy of a job this process is already generating (after a rebalance)
        waits rather than generate twice, and does not return (and let the offset move)
        before that run is done; it runs itself if that run died. A later attempt (a retry
        come back while the attempt before it is still ending) is no copy: it waits for that
        attempt, then runs."""
        while (running := self.in_flight.get(_key(job))) is not None:
            attempt, done = running
            if await asyncio.shield(done) and attempt >= job.attempt:
                return True
        return False

    async def claim_running(self, jobs: Iterable[ImageJob]) -> None:
        """These jobs' partitions are being taken from this process while it makes their
        images: claim the images before the partitions go, so that the next owner waits for
        them instead of paying the provider again, and keep the claims fresh until each is
        done. Jobs merely waiting on another process's claim are not claimed: that claim
        stays, and its writer stays its only writer."""
        attempts = {_key(job): job.attempt for job in jobs}  # now: `jobs` may be a view of what is running
        async with self._claims_lock:
            new = [key for key in attempts if key in self.making and key not in self.claimed]
            self.claimed.update((key, attempts[key]) for key in new)
            results = await asyncio.gather(*(self._claim(key) for key in new), return_exceptions=True)
        for key, result in zip(new, results, strict=True):
            if isinstance(result, Exception):  # the next owner may pay again for this one
                log.warning("could not claim %s/%s: %r", key[0], key[1], result)
        self._keep()

    def _keep(self) -> None:
        if self.claimed and (self._keeping is None or self._keeping.done()):
            self._keeping = asyncio.create_task(self._keep_claims())

    async def _keep_claims(self) -> None:
        while self.claimed:
            await asyncio.sleep(CLAIM_REFRESH_S)
            async with self._claims_lock:  # only claims still held: a release is final
                keys = list(self.claimed)
                results = await asyncio.gather(*(self._claim(key) for key in keys), return_exceptions=True)
            for key, result in zip(keys, results, strict=True):
                if isinstance(result, Exception):
                    log.warning("could not refresh the claim on %s/%s: %r", key[0], key[1], result)

    async def _claim(self, key: tuple[str, str, int]) -> None:
        await self.claims.claim(key[0], key[1], key[2], self.claimed[key])

    async def _release(self, key: tuple[str, str, int], attempt: int) -> None:
        async with self._claims_lock:
            self.claimed.pop(key, None)
            try:
                if key in self.answered:
                    self.answered.discard(key)
                    await self.claims.answer(key[0], key[1], key[2], attempt)
                else:
                    await self.claims.release(key[0], key[1])
            except Exception as exc:  # it goes stale in CLAIM_STALE_S; the image is saved or never will be
                log.warning("could not release the claim on %s/%s: %r", key[0], key[1], exc)

    async def _run(self, job: ImageJob, source_topic: str, headers: list[tuple[str, bytes]]) -> None:
        pack_id = str(job.pack_id)
        url = self.store.url(pack_id, job.image_id)
        while True:
            # Read for every job, not only those of a partition taken over: a copy of an attempt
            # that failed (the retry mover forwarding it again, or the partition read again after
            # a broker restart without a rebalance) finds the attempt answered, and pays nothing.
            claim = await self.claims.read(pack_id, job.image_id)
            # Looked at after the claim: whoever makes the image saves it (or marks the
            # attempt answered) before letting go.
            made_by = await self.store.finished(pack_id, job.image_id)
            if made_by is not None:
                # Redelivery or replay of an image that already exists: report it again exactly
                # as it was first reported (same event ids), and do not pay the provider twice.
                IMAGES.labels("duplicate").inc()
                await self.publisher.send(handlers.succeeded(job.model_copy(update={"attempt": made_by}), url, self.topics))
                return
            if claim is not None and claim.answers(job.run, job.attempt):
                IMAGES.labels("duplicate").inc()  # its retry or failure is on Kafka already
                return
            if not self.claims.held(claim):
                break
            # The process that had this job before a rebalance is still making the image.
            IMAGES.labels("waiting_for_claim").inc()
            await asyncio.sleep(1.0)
        if pack_id in self.cancelled:
            IMAGES.labels("cancelled").inc()  # never started: its pack was cancelled first
            return
        self.making.add(_key(job))
        # Claimed while the provider works, off the critical path: a process cut off from the
        # group long enough to lose its partitions without being told in time (a broker
        # restart) leaves its claims behind, and the next owner waits instead of paying again.
        self._claiming[_key(job)] = asyncio.create_task(self.claim_running([job]))
        await self._generate(job, source_topic, headers, url)

    async def _generate(self, job: ImageJob, source_topic: str, headers: list[tuple[str, bytes]], url: str) -> None:
        pack_id = str(job.pack_id)
        await self.limiter.acquire()
        # GENERATING goes out while the provider works; one producer keeps it ahead of the
        # outcome in the pack's partition, and its ack is awaited with the outcome's (_report).
        status = handlers.generating(job, self.topics)
        generating = await self.publisher.enqueue([status], keep=False)
        handlers.log_step("job_started", job)
        call: asyncio.Task[bytes] | None = None
        try:
            with provider_call(job):
                call = self.calls[_key(job)] = asyncio.ensure_future(self.backend.generate(job))
                try:
                    data = await call
                finally:
                    del self.calls[_key(job)]
            if pack_id in self.cancelled:
                return  # made after its pack was cancelled: never delivered
            await self._save(job, data)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if call is not None and call.cancelled() and task is not None and not task.cancelling():
                IMAGES.labels("abandoned").inc()  # its pack was cancelled during the call
                return
            raise
        except Exception as exc:
            IMAGES.labels(type(exc).__name__).inc()
            log.info("image %s/%s attempt %d failed: %r", pack_id, job.image_id, job.attempt, exc)
            outcome = handlers.failed(job, exc, self.policy, self.topics, source_topic, headers, self.rng)
            handlers.log_failure(job, outcome, self.topics)
            await self._report(generating, status, outcome)
            self.answered.add(_key(job))
            return
        IMAGES.labels("completed").inc()
        handlers.log_step("finished", job, url=url)
        await self._report(generating, status, handlers.succeeded(job, url, self.topics))

    async def _save(self, job: ImageJob, data: bytes) -> None:
        """The image, and its claim released in the same step, after the marker: from then on
        a next owner finds the image. A refresh in flight lands first (the lock), and none
        comes after: the claim is no longer held."""
        key = _key(job)
        claiming = self._claiming.pop(key, None)
        if claiming is not None:  # a call shorter than its claim's write: the claim goes now too
            await asyncio.gather(claiming, return_exceptions=True)
        async with self._claims_lock:
            attempt = self.claimed.pop(key, None)
        try:
            await self.store.save(key[0], job.image_id, job.user_id, data, job.attempt, release_claim=attempt is not None)
        except BaseException:
            if attempt is not None:
                self.claimed.setdefault(key, attempt)  # released (or marked answered) as the job ends
            raise

    async def _report(self, generating: list[asyncio.Future[Any]], status: Outgoing, outcome: list[Outgoing]) -> None:
        """The provider has answered: its answer reaches Kafka without the provider being asked
        again. A failed call leaves nothing in the store, so a job run again after a Kafka
        outage would pay for the same attempt twice; the outcome is sent again here instead,
        behind its GENERATING (same event ids: consumers drop the copies).

        The outcome is handed over right behind its GENERATING, before that one's ack: one
        producer keeps the two image statuses in order in the pack's partition, and an image
        made at once does not wait a round trip to Kafka more (real ones take long enough
        for the ack to be back anyway). Both acks are awaited before the job ends."""
        pending, messages, tries = generating, outcome, 0
        while True:
            try:
                await self.publisher.wait([*pending, *await self.publisher.enqueue(messages, keep=False)])
                return
            except BrokerUnavailable as exc:
                tries += 1
                log.warning("outcome for %s not acknowledged (%r); sending it again", status.key.decode(), exc)
                pending, messages = [], [status, *outcome]
                await asyncio.sleep(min(0.5 * tries, 5.0))


    def cancel_pack(self, pack_id: str, delivered: list[str], live: bool) -> None:
        """The pack was cancelled: its jobs are not started any more and its provider calls
        in flight are abandoned. `live` (not read back at start): an image made after the
        cancel decided what was delivered is removed from the store."""
        self.cancelled.add(pack_id)
        for key, call in list(self.calls.items()):
            if key[0] == pack_id:
                call.cancel()
        if live:
            task = asyncio.create_task(self._discard(pack_id, set(delivered)))
            self._discarding.add(task)
            task.add_done_callback(self._discarding.discard)

    async def _discard(self, pack_id: str, delivered: set[str]) -> None:
        try:
            for image_id in await self.store.delivered(pack_id):
                if image_id not in delivered:
                    await self.store.discard(pack_id, image_id)
        except Exception as exc:  # the snapshot and the ledger never show it anyway
            log.warning("could not remove the undelivered images of cancelled pack %s: %r", pack_id, exc)


def _key(job: ImageJob) -> tuple[str, str, int]:
    """One image of one run: what in_flight, making and claimed are keyed by."""
    return str(job.pack_id), job.image_id, job.run
