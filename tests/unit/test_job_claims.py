"""The job runner's claims (services/generation/jobs.py) over a real image store: a process
that loses a partition mid-generation claims the image, the next owner waits for it instead
of paying again, and a process only waiting on someone else's claim never writes one."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

from services.generation import handlers
from services.generation.claims import Claims
from services.generation.jobs import JobRunner
from shared.errors import BrokerUnavailable, TransientImageError
from shared.events import ImageJob
from shared.images import LocalImageStore
from shared.topics import Topics

T = Topics("x.")
POLICY = handlers.RetryPolicy(max_attempts=3, base_delay_s=2, max_delay_s=300)


class FakePublisher:
    def __init__(self) -> None:
        self.sent: list[Any] = []

    async def enqueue(self, messages: Iterable[Any], keep: bool = True) -> list[asyncio.Future[Any]]:
        self.sent.extend(messages)
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return [done]

    async def wait(self, futures: list[asyncio.Future[Any]]) -> None:
        pass

    async def send(self, messages: Iterable[Any]) -> None:
        self.sent.extend(messages)


class GatedBackend:
    """A provider whose every call waits for the gate."""

    def __init__(self) -> None:
        self.calls = 0
        self.gate = asyncio.Event()

    async def generate(self, job: ImageJob) -> bytes:
        self.calls += 1
        await self.gate.wait()
        return b"\x89PNG image"


def runner(store: LocalImageStore, backend: GatedBackend) -> JobRunner:
    return JobRunner(cast(Any, backend), store, cast(Any, FakePublisher()), T, POLICY)


def job() -> ImageJob:
    return ImageJob(pack_id=uuid.uuid4(), user_id="alice", image_id="main", kind="main", prompt="p", attempt=1)


async def until(check: Any, tries: int = 500) -> None:
    for _ in range(tries):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("not reached in time")


async def test_the_next_owner_waits_for_the_image_its_previous_owner_is_making(tmp_path: Path) -> None:
    store, backend = LocalImageStore(tmp_path, "http://api"), GatedBackend()
    a, b, j = runner(store, backend), runner(store, backend), job()
    making = asyncio.create_task(a.run(j, T.images_jobs, []))
    await until(lambda: backend.calls == 1)
    await a.claim_running([j])  # the rebalance takes the partition from A
    claim = await store.get_claim(str(j.pack_id), "main")
    assert claim is not None and json.loads(claim)["owner"] == a.owner
    inherited = asyncio.create_task(b.run(j, T.images_jobs, []))
    await asyncio.sleep(1.5)
    assert not inherited.done() and backend.calls == 1  # B waits, and does not pay
    backend.gate.set()
    await asyncio.wait_for(asyncio.gather(making, inherited), 5)
    assert backend.calls == 1
    assert await store.get_claim(str(j.pack_id), "main") is None  # released once the image was saved
    assert await store.finished(str(j.pack_id), "main") == 1


async def test_every_image_is_claimed_while_the_provider_makes_it_and_released_with_its_save(tmp_path: Path) -> None:
    """Without any rebalance: a process cut off from the group without being told (a broker
    restart) may be making it when the next owner reads the job."""
    store, backend = LocalImageStore(tmp_path, "http://api"), GatedBackend()
    a, j = runner(store, backend), job()
    making = asyncio.create_task(a.run(j, T.images_jobs, []))  # not inherited: no rebalance involved
    await until(lambda: backend.calls == 1 and (tmp_path / str(j.pack_id) / ".main.claim").exists())
    claim = await store.get_claim(str(j.pack_id), "main")
    assert claim is not None and json.loads(claim) | {"refreshed_at": 0} == {
        "owner": a.owner, "refreshed_at": 0, "run": 0, "attempt": 1}
    assert await Claims(store, "B").held_by_other(str(j.pack_id), "main")
    backend.gate.set()
    await asyncio.wait_for(making, 5)
    assert await store.finished(str(j.pack_id), "main") == 1
    assert await store.get_claim(str(j.pack_id), "main") is None and not a.claimed
    again = asyncio.create_task(a.run(j, T.images_jobs, []))  # a redelivered copy: reported, not claimed
    await asyncio.wait_for(again, 5)
    assert backend.calls == 1 and await store.get_claim(str(j.pack_id), "main") is None


async def test_a_process_waiting_on_a_claim_does_not_claim_the_image(tmp_path: Path) -> None:
    store, backend = LocalImageStore(tmp_path, "http://api"), GatedBackend()
    b, j = runner(store, backend), job()
    pack_id = str(j.pack_id)
    await Claims(store, "A").claim(pack_id, "main")  # A is making it
    waiting = asyncio.create_task(b.run(j, T.images_jobs, []))
    await until(lambda: b.in_flight)
    await b.claim_running([j])  # B loses the partition while it waits on A
    claim = await store.get_claim(pack_id, "main")
    assert claim is not None and json.loads(claim)["owner"] == "A", "A's claim was overwritten"
    await store.save(pack_id, "main", "alice", b"png", 1)  # A is done
    await Claims(store, "A").release(pack_id, "main")
    await asyncio.wait_for(waiting, 5)
    assert backend.calls == 0


class FailingBackend:
    def __init__(self) -> None:
        self.calls = 0

    async def generate(self, job: ImageJob) -> bytes:
        self.calls += 1
        raise TransientImageError("provider busy")


class OutagePublisher(FakePublisher):
    """Kafka does not acknowledge the first `outage` sends."""

    def __init__(self, outage: int) -> None:
        super().__init__()
        self.outage = outage

    async def send(self, messages: Iterable[Any]) -> None:
        if self.outage:
            self.outage -= 1
            raise BrokerUnavailable("Kafka did not acknowledge")
        await super().send(messages)


async def test_a_failed_call_whose_outcome_kafka_does_not_take_is_not_made_again(tmp_path: Path) -> None:
    """A failed call leaves no image behind to find: if the job ran again after the outage,
    the provider would be paid twice for the same attempt."""
    backend, publisher = FailingBackend(), OutagePublisher(outage=2)
    runner = JobRunner(cast(Any, backend), LocalImageStore(tmp_path, "http://api"), cast(Any, publisher), T, POLICY)
    await runner.run(job(), T.images_jobs, [])
    assert backend.calls == 1
    topics = [m.topic for m in publisher.sent]
    assert topics[-3:-1] == [T.packs_status] * 2 and topics[-1] in T.retry_topics  # GENERATING, RETRYING, the retry


async def test_the_next_owner_drops_an_attempt_that_failed_and_was_answered(tmp_path: Path) -> None:
    """The previous owner made the call, it failed, and its retry is on Kafka: nothing is in
    the store to find, so without the answered claim the next owner would pay again."""
    store, backend = LocalImageStore(tmp_path, "http://api"), FailingBackend()
    a_publisher, b_publisher = FakePublisher(), FakePublisher()
    a = JobRunner(cast(Any, backend), store, cast(Any, a_publisher), T, POLICY)
    b = JobRunner(cast(Any, backend), store, cast(Any, b_publisher), T, POLICY)
    j = job()
    await a.run(j, T.images_jobs, [])
    assert backend.calls == 1 and [m.topic for m in a_publisher.sent][-1] in T.retry_topics
    await b.run(j, T.images_jobs, [])  # read again after a rebalance
    assert backend.calls == 1 and b_publisher.sent == []
    retry = j.model_copy(update={"attempt": 2})
    await b.run(retry, T.images_jobs, [])  # the next attempt is made
    assert backend.calls == 2


async def test_a_copy_of_a_failed_attempt_read_again_by_the_same_process_is_dropped(tmp_path: Path) -> None:
    """The partition read again without a rebalance (a broker restart), or the retry mover
    forwarding the attempt twice: the same process meets the same failed attempt again and
    must not pay for it a second time; its retry is on Kafka already."""
    backend, publisher = FailingBackend(), FakePublisher()
    runner = JobRunner(cast(Any, backend), LocalImageStore(tmp_path, "http://api"), cast(Any, publisher), T, POLICY)
    j = job()
    await runner.run(j, T.images_jobs, [])
    sent = len(publisher.sent)
    await runner.run(j, T.images_jobs, [])  # the same attempt again
    assert backend.calls == 1 and len(publisher.sent) == sent
    await runner.run(j.model_copy(update={"attempt": 2}), T.images_jobs, [])  # its retry is made
    assert backend.calls == 2


class FailsFirstBackend(GatedBackend):
    """Attempt 1 waits for the gate and fails; any later attempt makes the image."""

    async def generate(self, job: ImageJob) -> bytes:
        self.calls += 1
        if job.attempt == 1:
            await self.gate.wait()
            raise TransientImageError("provider busy")
        return b"\x89PNG image"


async def test_a_retry_that_comes_back_while_its_previous_attempt_is_still_ending_is_made(tmp_path: Path) -> None:
    """Jobs of one image and run share a key; only a copy of the same attempt is dropped,
    a later attempt waits for the earlier one to end and is then made."""
    backend = FailsFirstBackend()
    r = runner(LocalImageStore(tmp_path, "http://api"), backend)
    j = job()
    first = asyncio.create_task(r.run(j, T.images_jobs, []))
    await until(lambda: backend.calls == 1)
    retry = asyncio.create_task(r.run(j.model_copy(update={"attempt": 2}), T.images_jobs, []))
    await asyncio.sleep(0.05)
    assert backend.calls == 1  # waiting for attempt 1 to end
    backend.gate.set()
    await asyncio.wait_for(asyncio.gather(first, retry), 5)
    assert backend.calls == 2 and await r.store.finished(str(j.pack_id), "main") == 2
