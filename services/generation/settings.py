from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from shared.settings import CommonSettings


class Settings(CommonSettings):
    image_backend: Literal["openai", "local"] | None = None
    openai_api_key: str | None = None
    openai_base_url: str | None = None
    openai_timeout_s: float = Field(default=120.0, gt=0)
    image_model: str = "gpt-image-1"
    local_image_latency_ms: int = Field(default=1500, ge=0)
    local_image_jitter_ms: int = Field(default=0, ge=0)  # each image takes latency ± jitter, like a real model
    local_image_failure_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    # Test and chaos knobs of the local backend (docs/contract.md, "Configuration"):
    local_image_fail_first: int = Field(default=0, ge=0)  # transient failures before success, per image
    local_image_permanent_fail_kinds: str = ""  # comma-separated kinds that always fail permanently
    local_image_latency_by_kind: str = ""  # `kind=ms,...`: these kinds take this long instead
    # "placeholder": an 8x8 PNG instead of rendering the full size, so a benchmark measures
    # the pipeline rather than this machine's PNG encoder.
    local_image_render: Literal["full", "placeholder"] = "full"
    # A file that every local provider call appends one JSON line to (pack_id, image_id, run,
    # attempt, pid, start, end, outcome): how tests count what the provider was paid for.
    local_image_call_log: str = ""
    generation_concurrency: int = Field(default=64, ge=1)  # images in flight per process
    generation_prefetch: int = Field(default=2000, ge=1)  # jobs read ahead into the fair queue
    generation_shutdown_grace_s: float = Field(default=10.0, ge=0)  # SIGTERM: let images finish this long
    # The provider's limit for the whole deployment (0 = none), split across processes.
    images_per_minute: float = Field(default=0.0, ge=0)
    images_burst: int = Field(default=1, ge=1)
    retry_max_attempts: int = Field(default=5, ge=1)
    retry_base_delay_s: float = Field(default=2.0, ge=0)
    retry_max_delay_s: float = Field(default=300.0, ge=0)
    generation_port: int = 8003

    @model_validator(mode="after")
    def _backend(self) -> Settings:
        if self.image_backend is None:
            self.image_backend = "openai" if self.openai_api_key else "local"
        if self.image_backend == "openai" and not self.openai_api_key:
            raise ValueError("IMAGE_BACKEND=openai needs OPENAI_API_KEY")
        return self

    @property
    def latency_by_kind_s(self) -> dict[str, float]:
        pairs = (item.split("=", 1) for item in self.local_image_latency_by_kind.split(",") if "=" in item)
        return {kind.strip(): int(ms) / 1000 for kind, ms in pairs}

    @property
    def permanent_fail_kinds(self) -> frozenset[str]:
        return frozenset(k.strip() for k in self.local_image_permanent_fail_kinds.split(",") if k.strip())
