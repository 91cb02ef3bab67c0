from __future__ import annotations

from pydantic import Field

from shared.settings import CommonSettings


class Settings(CommonSettings):
    notifier_host: str = "127.0.0.1"
    notifier_port: int = 8001
    notifier_history: int = Field(default=500, ge=1)  # events kept per pack for Last-Event-ID resume
    notifier_ping_s: float = Field(default=15.0, gt=0)
    # A client may subscribe a moment before its pack reaches the notifier: wait this long.
    notifier_pack_wait_s: float = Field(default=10.0, ge=0)
    notifier_ready_timeout_s: float = Field(default=30.0, gt=0)
