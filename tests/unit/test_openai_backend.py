"""The real `openai` client against a local images-API server: every failure class takes its path."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator

import pytest

from services.generation import handlers
from services.generation.backends import OpenAIBackend
from services.generation.settings import Settings
from shared.errors import PermanentImageError, TransientImageError
from shared.events import ImageJob
from shared.kafka import header
from shared.topics import Topics
from tests.fake_images_api import CONTENT_POLICY, PNG, FakeImagesApi

JOB = ImageJob(pack_id=uuid.uuid4(), user_id="alice", image_id="main", kind="main", prompt="A steel bottle", width=1024, height=1024)


@pytest.fixture
def fake() -> Iterator[FakeImagesApi]:
    with FakeImagesApi.running() as api:
        yield api


def backend(fake: FakeImagesApi, timeout: float = 5.0) -> OpenAIBackend:
    return OpenAIBackend(Settings(image_backend="openai", openai_api_key="test-key", openai_base_url=fake.base_url,
                                  openai_timeout_s=timeout, packline_secret="x"))


async def test_success_returns_the_png(fake: FakeImagesApi) -> None:
    assert await backend(fake).generate(JOB) == PNG
    [req] = fake.requests
    assert req["body"]["prompt"] == "A steel bottle" and req["body"]["size"] == "1024x1024"
    assert req["body"]["model"] == "gpt-image-1" and req["auth"] == "Bearer test-key"


async def test_429_is_transient_and_honours_retry_after(fake: FakeImagesApi) -> None:
    fake.plan.append(("status", 429, {"Retry-After": "7"}))
    with pytest.raises(TransientImageError) as err:
        await backend(fake).generate(JOB)
    assert err.value.retry_after_s == 7
    assert len(fake.requests) == 1  # the client's own retries are off: retries are ours
    _status, retry = handlers.failed(JOB, err.value, handlers.RetryPolicy(5, 2, 300), Topics(), "images.jobs", [],
                                    random.Random(0), now=1000.0)
    assert retry.topic == "images.retry.30s" and int(header(retry.headers, "x-due-at") or 0) >= 1_007_000


async def test_500_is_transient(fake: FakeImagesApi) -> None:
    fake.plan.append(("status", 500))
    with pytest.raises(TransientImageError, match="500"):
        await backend(fake).generate(JOB)


async def test_a_timeout_is_transient(fake: FakeImagesApi) -> None:
    fake.plan.append(("hang", 3))
    with pytest.raises(TransientImageError, match="unreachable"):
        await backend(fake, timeout=0.5).generate(JOB)


async def test_content_policy_400_is_permanent_and_dead_lettered(fake: FakeImagesApi) -> None:
    fake.plan.append(("status", 400, {}, CONTENT_POLICY))
    with pytest.raises(PermanentImageError, match="safety system") as err:
        await backend(fake).generate(JOB)
    dlq, _status, result = handlers.failed(JOB, err.value, handlers.RetryPolicy(5, 2, 300), Topics(), "images.jobs", [],
                                          random.Random(0))
    assert dlq.topic == "images.dlq" and result.topic == "images.results"
