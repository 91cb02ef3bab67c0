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
    inherited = asyncio.create_task(b.run(j, T.images_jobs, [], inherited=True))
    await asyncio.sleep(1.5)
    assert not inherited.done() and backend.calls == 1  # B waits, and does not pay
    backend.gate.set()
    await asyncio.wait_for(asyncio.gather(making, inherited), 5)
    assert backend.calls == 1
    assert await store.get_claim(str(j.pack_id), "main") is None  # released once the image was saved
    assert await store.finished(str(j.pack_id), "main") == 1


async def test_a_process_waiting_on_a_claim_does_not_claim_the_image(tmp_path: Path) -> None:
    store, backend = LocalImageStore(tmp_path, "http://api"), GatedBackend()
    b, j = runner(store, backend), job()
    pack_id = str(j.pack_id)
    await Claims(store, "A").claim(pack_id, "main")  # A is making it
    waiting = asyncio.create_task(b.run(j, T.images_jobs, [], inherited=True))
    await until(lambda: b.in_flight)
    await b.claim_running([j])  # B loses the partition while it waits on A
    claim = await store.get_claim(pack_id, "main")
    assert claim is not None and json.loads(claim)["owner"] == "A", "A's claim was overwritten"
    await store.save(pack_id, "main", "alice", b"png", 1)  # A is done
    await Claims(store, "A").release(pack_id, "main")
    await asyncio.wait_for(waiting, 5)
    assert backend.calls == 0
