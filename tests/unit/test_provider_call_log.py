"""LOCAL_IMAGE_CALL_LOG: one line per provider call of the local backend, however the call
ends, and whole lines when several processes append to one file."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import time
import uuid
from pathlib import Path

import pytest

from services.generation.backends import LocalBackend, log_provider_call
from services.generation.settings import Settings
from shared.errors import PermanentImageError, TransientImageError
from shared.events import ImageJob
from tests.harness import read_provider_calls

PACK = uuid.UUID("00000000-0000-4000-8000-000000000001")


def job(kind: str = "main", attempt: int = 1, run: int = 0) -> ImageJob:
    return ImageJob(pack_id=PACK, user_id="u-1", image_id=kind, kind=kind, prompt="p", attempt=attempt, run=run,
                    width=16, height=16)


def backend(log: Path | None, **settings: object) -> LocalBackend:
    return LocalBackend(Settings(local_image_latency_ms=0, local_image_render="placeholder",
                                 local_image_call_log=str(log) if log else "", **settings))  # type: ignore[arg-type]


async def test_every_call_is_one_line_whatever_its_outcome(tmp_path: Path) -> None:
    log = tmp_path / "calls.jsonl"
    local = backend(log, local_image_fail_first=1, local_image_permanent_fail_kinds="lifestyle")
    before = time.time()
    with pytest.raises(TransientImageError):
        await local.generate(job(attempt=1))
    assert (await local.generate(job(attempt=2, run=3))).startswith(b"\x89PNG")
    with pytest.raises(PermanentImageError):
        await local.generate(job("lifestyle", attempt=2))
    slow = LocalBackend(Settings(local_image_latency_ms=10_000, local_image_call_log=str(log)))
    call = asyncio.create_task(slow.generate(job("detail", attempt=4)))
    await asyncio.sleep(0.05)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    calls = read_provider_calls(log)
    assert [(c["image_id"], c["run"], c["attempt"], c["outcome"]) for c in calls] == [
        ("main", 0, 1, "transient"), ("main", 3, 2, "ok"), ("lifestyle", 0, 2, "permanent"), ("detail", 0, 4, "cancelled"),
    ]
    assert all(c["pack_id"] == str(PACK) and c["pid"] == os.getpid() for c in calls)
    assert all(before <= c["start"] <= c["end"] <= time.time() for c in calls)
    assert calls[-1]["end"] - calls[-1]["start"] < 5  # cancelled mid-call, not run to its end


async def test_no_setting_no_log(tmp_path: Path) -> None:
    await backend(None).generate(job())
    assert os.listdir(tmp_path) == []
    assert read_provider_calls(tmp_path / "absent.jsonl") == []


def _append_many(path: str, n: int) -> None:
    for i in range(n):
        log_provider_call(path, job(kind=f"k{os.getpid()}", attempt=i + 1), time.time(), "ok")


def test_processes_appending_to_one_log_keep_every_line_whole(tmp_path: Path) -> None:
    log = str(tmp_path / "calls.jsonl")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(log, 300)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    calls = read_provider_calls(log)  # a torn or interleaved line would not parse
    assert len(calls) == 4 * 300
    for p in procs:
        assert sorted(c["attempt"] for c in calls if c["pid"] == p.pid) == list(range(1, 301))


async def test_an_unexpected_error_is_logged_as_such(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "calls.jsonl"
    local = backend(log)

    async def broken(_job: ImageJob) -> bytes:
        raise ValueError("boom")

    monkeypatch.setattr(local, "_generate", broken)
    with pytest.raises(ValueError):
        await local.generate(job())
    assert [c["outcome"] for c in read_provider_calls(log)] == ["error"]
