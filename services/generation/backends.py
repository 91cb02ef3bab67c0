"""Image backends. Both raise the domain's TransientImageError / PermanentImageError, so
the retry policy never looks at a vendor's exception types."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import math
import os
import random
import time
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Protocol, cast

import openai
from PIL import Image, ImageDraw

from services.generation.settings import Settings
from shared.errors import PermanentImageError, TransientImageError
from shared.events import ImageJob

MAX_RETRY_AFTER_S = 3600.0  # a provider's Retry-After beyond this is not trusted


class ImageBackend(Protocol):
    async def generate(self, job: ImageJob) -> bytes: ...


class LocalBackend:
    """Renders a real PNG of the requested size after the configured latency."""

    def __init__(self, settings: Settings, rng: random.Random | None = None) -> None:
        self.latency_s = settings.local_image_latency_ms / 1000
        self.jitter_s = min(settings.local_image_jitter_ms, settings.local_image_latency_ms) / 1000
        self.failure_rate = settings.local_image_failure_rate
        self.fail_first = settings.local_image_fail_first
        self.permanent_kinds = settings.permanent_fail_kinds
        self.latency_by_kind = settings.latency_by_kind_s
        self.placeholder = render_png("placeholder", 8, 8, "") if settings.local_image_render == "placeholder" else None
        self.rng = rng or random.Random()
        self.call_log = settings.local_image_call_log

    async def generate(self, job: ImageJob) -> bytes:
        """One provider call. With LOCAL_IMAGE_CALL_LOG, each call is one line when it starts
        (outcome `started`) and one when it ends, however it ends: a call whose process was
        killed mid-call has the first only."""
        start, outcome = time.time(), "error"
        if self.call_log:
            log_provider_call(self.call_log, job, start, "started")
        try:
            data = await self._generate(job)
            outcome = "ok"
            return data
        except asyncio.CancelledError:
            outcome = "cancelled"  # e.g. a shutdown past its grace: the provider was paid for nothing
            raise
        except TransientImageError:
            outcome = "transient"
            raise
        except PermanentImageError:
            outcome = "permanent"
            raise
        finally:
            if self.call_log:
                log_provider_call(self.call_log, job, start, outcome)

    async def _generate(self, job: ImageJob) -> bytes:
        await asyncio.sleep(self.latency_by_kind.get(job.kind, self.latency_s) + self.rng.uniform(-self.jitter_s, self.jitter_s))
        if job.kind in self.permanent_kinds:
            raise PermanentImageError(f"the local backend refuses {job.kind!r} images (content policy)")
        if job.attempt <= self.fail_first or self.rng.random() < self.failure_rate:
            raise TransientImageError(f"local backend: injected transient failure on attempt {job.attempt}")
        if self.placeholder is not None:
            return self.placeholder
        return await asyncio.to_thread(render_png, job.prompt, job.width, job.height, job.kind)


def log_provider_call(path: str, job: ImageJob, start: float, outcome: str) -> None:
    """Append one line for one provider call, in one write() to a file opened with O_APPEND:
    the kernel puts each such write whole at the end of the file, so several generation
    processes can share one log without interleaving their (short) lines."""
    line = json.dumps({
        "pack_id": str(job.pack_id), "image_id": job.image_id, "run": job.run, "attempt": job.attempt,
        "pid": os.getpid(), "start": start, "end": time.time(), "outcome": outcome,
    }) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def render_png(prompt: str, width: int, height: int, label: str) -> bytes:
    digest = hashlib.sha256(prompt.encode()).digest()
    image = Image.new("RGB", (width, height), (digest[0], digest[1], digest[2]))
    draw = ImageDraw.Draw(image)
    inset = min(width, height) // 8
    draw.rectangle((inset, inset, width - inset, height - inset), fill=(digest[3], digest[4], digest[5]))
    y = inset + 10
    for line in [label.upper(), *_wrap(prompt, 60)[:12]]:
        draw.text((inset + 10, y), line, fill=(255, 255, 255))
        y += 16
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _wrap(text: str, width: int) -> list[str]:
    words, lines, line = text.split(), [], ""
    for word in words:
        if len(line) + len(word) + 1 > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return lines + ([line] if line else [])


class OpenAIBackend:
    """The real `openai` client; its own retries are off because retries are ours (retry topics)."""

    def __init__(self, settings: Settings) -> None:
        self.client = openai.AsyncOpenAI(
            api_key=settings.openai_api_key, base_url=settings.openai_base_url,
            max_retries=0, timeout=settings.openai_timeout_s,
        )
        self.model = settings.image_model

    async def generate(self, job: ImageJob) -> bytes:
        try:
            response = await self.client.images.generate(
                # The provider judges the size; the client's type lists only today's sizes.
                model=self.model, prompt=job.prompt, size=cast(Any, f"{job.width}x{job.height}"), n=1,
            )
        except (openai.APITimeoutError, openai.APIConnectionError) as exc:
            raise TransientImageError(f"image API unreachable: {exc}") from exc
        except openai.APIStatusError as exc:
            raise classify_status(exc) from exc
        if not response.data or not response.data[0].b64_json:
            raise TransientImageError("image API answered without image data")
        return base64.b64decode(response.data[0].b64_json)

    async def close(self) -> None:
        await self.client.close()


def classify_status(exc: openai.APIStatusError) -> Exception:
    status = exc.status_code
    message = _api_message(exc)
    if status == 429 or status >= 500 or status in (408, 409):
        return TransientImageError(f"image API {status}: {message}", _retry_after(exc))
    return PermanentImageError(f"image API {status}: {message}")


def _api_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
    return exc.message


def _retry_after(exc: openai.APIStatusError) -> float | None:
    """Seconds from `retry-after-ms` or `Retry-After` (seconds or an HTTP date); None if absent or absurd."""
    headers = exc.response.headers
    try:
        if (ms := headers.get("retry-after-ms")) is not None:
            seconds = float(ms) / 1000
        elif (value := headers.get("retry-after")) is not None:
            try:
                seconds = float(value)
            except ValueError:
                seconds = (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds()
        else:
            return None
    except (TypeError, ValueError, OverflowError):
        return None
    return min(max(0.0, seconds), MAX_RETRY_AFTER_S) if math.isfinite(seconds) else None


def make_backend(settings: Settings) -> ImageBackend:
    return OpenAIBackend(settings) if settings.image_backend == "openai" else LocalBackend(settings)
