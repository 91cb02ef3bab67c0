"""Edges of the real `openai` client against the local images-API server that
test_openai_backend.py leaves open: that a timeout is really a timeout (not a refused
connection), a refused connection, a 401, and what the retry and dead-letter messages
built from a real 429 / 400 carry."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import openai
import pytest

from services.generation import handlers
from services.generation.backends import OpenAIBackend
from services.generation.settings import Settings
from shared.devbroker import free_port
from shared.errors import PermanentImageError, TransientImageError
from shared.events import ImageFailed, ImageJob, ImageStatus, decode
from shared.kafka import header
from shared.topics import Topics
from tests.fake_images_api import CONTENT_POLICY, FakeImagesApi

JOB = ImageJob(pack_id=uuid.uuid4(), user_id="alice", image_id="main", kind="main", prompt="A steel bottle")
# Jitter alone stays under 2 s, so a due time 7 s away can only come from Retry-After.
POLICY = handlers.RetryPolicy(max_attempts=5, base_delay_s=0.5, max_delay_s=2)
NOW = 1_000.0


@pytest.fixture
def fake() -> Iterator[FakeImagesApi]:
    with FakeImagesApi.running() as api:
        yield api


def backend(base_url: str, timeout: float = 5.0) -> OpenAIBackend:
    return OpenAIBackend(Settings(image_backend="openai", openai_api_key="test", openai_base_url=base_url,
                                  openai_timeout_s=timeout, packline_secret="x"))


async def test_a_hanging_server_is_a_timeout_not_a_refusal(fake: FakeImagesApi) -> None:
    fake.plan.append(("hang", 3))
    with pytest.raises(TransientImageError) as err:
        await backend(fake.base_url, timeout=0.5).generate(JOB)
    assert isinstance(err.value.__cause__, openai.APITimeoutError)
    assert len(fake.requests) == 1  # the request reached the server, and was not retried by the client


async def test_a_refused_connection_is_transient() -> None:
    with pytest.raises(TransientImageError) as err:
        await backend(f"http://127.0.0.1:{free_port()}/v1").generate(JOB)
    assert isinstance(err.value.__cause__, openai.APIConnectionError)
    assert not isinstance(err.value.__cause__, openai.APITimeoutError)


async def test_401_is_permanent(fake: FakeImagesApi) -> None:
    fake.plan.append(("status", 401, {}, {"message": "Incorrect API key provided", "type": "invalid_request_error",
                                          "code": "invalid_api_key"}))
    with pytest.raises(PermanentImageError, match="Incorrect API key"):
        await backend(fake.base_url).generate(JOB)
    assert len(fake.requests) == 1


async def test_a_real_429_retries_no_sooner_than_retry_after(fake: FakeImagesApi) -> None:
    fake.plan.append(("status", 429, {"Retry-After": "7"}))
    with pytest.raises(TransientImageError) as err:
        await backend(fake.base_url).generate(JOB)
    t = Topics("p.")
    status, retry = handlers.failed(JOB, err.value, POLICY, t, t.images_jobs, [], random.Random(0), now=NOW)

    assert retry.topic in t.retry_topics and retry.topic != t.images_dlq
    assert int(header(retry.headers, "x-due-at") or 0) >= (NOW + 7) * 1000
    assert header(retry.headers, "x-error-type") == "TransientImageError"
    assert header(retry.headers, "x-original-topic") == t.images_jobs
    again = decode(retry.value)
    assert isinstance(again, ImageJob) and again.attempt == 2 and again.image_id == JOB.image_id

    event = decode(status.value)
    assert status.topic == t.packs_status and isinstance(event, ImageStatus)
    assert event.image.status == "RETRYING" and "429" in (event.image.error or "")
    assert event.image.next_attempt_at is not None
    assert event.image.next_attempt_at >= datetime.fromtimestamp(NOW + 7, UTC)


async def test_a_real_content_policy_400_is_dead_lettered_with_its_reason(fake: FakeImagesApi) -> None:
    fake.plan.append(("status", 400, {}, CONTENT_POLICY))
    with pytest.raises(PermanentImageError) as err:
        await backend(fake.base_url).generate(JOB)
    t = Topics("p.")
    out = handlers.failed(JOB, err.value, POLICY, t, t.images_jobs, [], random.Random(0), now=NOW)

    assert [o.topic for o in out] == [t.images_dlq, t.packs_status, t.images_results]  # no retry topic
    dlq = out[0]
    assert header(dlq.headers, "x-error-type") == "PermanentImageError"
    assert CONTENT_POLICY["message"] in (header(dlq.headers, "x-error") or "")
    assert header(dlq.headers, "x-attempts") == "1"
    failed = decode(out[2].value)
    assert isinstance(failed, ImageFailed) and CONTENT_POLICY["message"] in failed.error and failed.cost == JOB.cost


@pytest.mark.parametrize("value", ["inf", "1e308"])
async def test_an_absurd_retry_after_still_yields_a_retry(fake: FakeImagesApi, value: str) -> None:
    fake.plan.append(("status", 429, {"Retry-After": value}))
    with pytest.raises(TransientImageError) as err:
        await backend(fake.base_url).generate(JOB)
    t = Topics("p.")
    out = handlers.failed(JOB, err.value, POLICY, t, t.images_jobs, [], random.Random(0), now=NOW)
    assert out[-1].topic in t.retry_topics
