from __future__ import annotations

from pydantic import Field

from shared.settings import CommonSettings


class Settings(CommonSettings):
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    # How long a request may wait for Kafka's acknowledgement before the api answers 503.
    api_kafka_timeout_s: float = Field(default=5.0, gt=0)
    # How long a cancel or a regeneration waits for credits' answer (it queues behind the pack's results).
    api_change_timeout_s: float = Field(default=10.0, gt=0)
    # The per-user limit of the whole deployment: the live api instances share it out (api.instances).
    rate_limit_per_s: float = Field(default=20.0, gt=0)
    rate_limit_burst: int = Field(default=40, ge=1)
    # Each api instance's heartbeat on api.instances, and how long one counts as live without a newer one.
    api_heartbeat_s: float = Field(default=2.0, gt=0)
    api_instance_ttl_s: float = Field(default=10.0, gt=0)
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)

    # How long a user stream token (POST /v1/stream-tokens) opens GET /v1/events for.
    user_stream_token_ttl_s: int = Field(default=15 * 60, ge=1)
