from __future__ import annotations

from pydantic import Field

from shared.settings import CommonSettings


class Settings(CommonSettings):
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    # How long a request may wait for Kafka's acknowledgement before the api answers 503.
    api_kafka_timeout_s: float = Field(default=5.0, gt=0)
    rate_limit_per_s: float = Field(default=20.0, gt=0)
    rate_limit_burst: int = Field(default=40, ge=1)
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)

