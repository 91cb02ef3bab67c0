from __future__ import annotations

from pathlib import Path

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
    # The read model (every pack ever made, and the feed's checkpoint): one SQLite file per
    # instance. Default VAR_DIR/notifier-<port>.db; deleting it rebuilds it from packs.status.
    notifier_db_path: Path | None = None
    # Finished packs kept in memory (least recently used out); live packs always are.
    notifier_cache_packs: int = Field(default=10_000, ge=0)
    # How often what changed is written to the read model, with the checkpoint.
    notifier_flush_s: float = Field(default=0.5, gt=0)

    # Balances and statements, fed by credits.events: its own SQLite file, default
    # VAR_DIR/notifier-<port>-statements.db; deleting it rebuilds it from credits.events.
    notifier_statement_db_path: Path | None = None
    # Webhooks (docs/webhooks.md): how long a receiver may take to answer, attempts before the
    # dead letters, the backoff (doubling from base, at most max, in the retry tiers), and
    # per endpoint the deliveries in flight and waiting here (past it, set aside in a retry tier).
    webhook_timeout_s: float = Field(default=10.0, gt=0)
    webhook_max_attempts: int = Field(default=8, ge=1)
    webhook_retry_base_s: float = Field(default=1.0, gt=0)
    webhook_retry_max_s: float = Field(default=300.0, gt=0)
    webhook_slots_per_endpoint: int = Field(default=4, ge=1)
    webhook_backlog_per_endpoint: int = Field(default=100, ge=1)
    webhook_prefetch: int = Field(default=2000, ge=1)

    @property
    def notifier_db(self) -> Path:
        return self.notifier_db_path or self.var_dir / f"notifier-{self.notifier_port}.db"

    @property
    def notifier_statement_db(self) -> Path:
        return self.notifier_statement_db_path or self.var_dir / f"notifier-{self.notifier_port}-statements.db"
