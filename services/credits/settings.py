from __future__ import annotations

from pydantic import Field, model_validator

from shared.settings import CommonSettings


class Settings(CommonSettings):
    database_url: str = ""  # default: sqlite under VAR_DIR (var/credits.db)
    credits_port: int = Field(default=8002, description="metrics and health")
    # A pack with pending images and no result for this long is driven again (see handlers.redrive).
    redrive_after_s: float = Field(default=1800.0, gt=0)
    redrive_every_s: float = Field(default=30.0, gt=0)
    # Intake (intake.py): pack requests read ahead, and how many may wait per user and per publishing service.
    intake_prefetch: int = Field(default=50_000, ge=1)
    intake_batch: int = Field(default=50, ge=1)  # requests per ledger transaction, at most
    intake_max_queued_per_user: int = Field(default=1_000, ge=1)
    intake_max_queued_per_source: int = Field(default=20_000, ge=1)

    @model_validator(mode="after")
    def _database(self) -> Settings:
        if not self.database_url:
            self.var_dir.mkdir(parents=True, exist_ok=True)
            self.database_url = f"sqlite:///{self.var_dir / 'credits.db'}"
        return self

