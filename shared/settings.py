"""Settings every service shares. Each service subclasses this once in its own settings.py."""

from __future__ import annotations

import logging
import secrets
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.auth import Keyring, parse_secrets
from shared.kafka import KafkaConfig, SaslMechanism, SecurityProtocol
from shared.topics import Topics

log = logging.getLogger("packline.settings")
ROOT = Path(__file__).resolve().parent.parent


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=None, extra="ignore")

    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    kafka_security_protocol: SecurityProtocol = "PLAINTEXT"
    kafka_sasl_mechanism: SaslMechanism | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: str | None = None
    kafka_ssl_certfile: str | None = None
    kafka_ssl_keyfile: str | None = None
    # Topics packline creates: replicas (default min(3, brokers)) and min ISR (default replicas - 1).
    kafka_replication_factor: int | None = Field(default=None, ge=1)
    kafka_min_insync_replicas: int | None = Field(default=None, ge=1)
    # Extension: isolates a whole deployment (or one test) on a shared broker.
    topic_prefix: str = ""
    topic_partitions: int = Field(default=6, ge=1)
    var_dir: Path = ROOT / "var"
    packline_secret: str = ""  # the one secret, when PACKLINE_SECRETS is not set
    packline_secrets: str = ""  # comma-separated: the first signs, every one verifies (rotation)
    notifier_public_url: str = "http://127.0.0.1:8001"
    api_public_url: str = "http://127.0.0.1:8000"
    price_listing: int = Field(default=1, ge=0)
    price_aplus: int = Field(default=2, ge=0)
    stream_token_ttl_s: int = Field(default=24 * 3600, ge=1)
    # Where finished images live (shared/images.py): empty for VAR_DIR/images, a directory, or
    # s3://bucket/prefix. For S3, credentials come from boto3's chain (AWS_ACCESS_KEY_ID,
    # AWS_SECRET_ACCESS_KEY, a profile or an instance role).
    image_store: str = ""
    # IMAGE_STORE_INLINE_BYTES: a directory store reads and writes files up to this size on
    # the event loop (a local disk answers in microseconds); 0 sends every file operation to
    # a thread (a slow or network file system).
    image_store_inline_bytes: int = Field(default=256 * 1024, ge=0)
    s3_endpoint_url: str | None = None  # an S3-compatible service (MinIO, s3proxy, ...); unset: AWS
    aws_region: str | None = None  # unset: boto3's default (AWS_DEFAULT_REGION, the profile)
    # The workers' /healthz and /metrics listen here (0.0.0.0 for a Prometheus in another container).
    metrics_host: str = "127.0.0.1"
    metrics_every_s: float = Field(default=10.0, gt=0)  # how often the workers read consumer lag and topic depths
    # Host names and CIDRs webhooks may target although private, loopback or link-local
    # (the api checks at registration, the deliverer before every attempt).
    webhook_allowed_hosts: str = ""
    log_format: Literal["json", "text"] = "text"  # LOG_FORMAT: json for one JSON object per line
    dlq_max_replays: int = Field(default=3, ge=1)  # DLQ_MAX_REPLAYS: replays of an image before its dead letter is parked
    # PROCESS_NICE: the process's CPU niceness (0-19). On a host the edges share with the
    # workers, niced workers leave the api and the notifier answering in milliseconds while
    # the pipeline is saturated (`packline up` nices credits and generation, WORKER_NICE).
    process_nice: int = Field(default=0, ge=0, le=19)

    @model_validator(mode="after")
    def _image_store(self) -> CommonSettings:
        if self.image_store.startswith("s3://"):
            from shared.images import parse_s3_url

            parse_s3_url(self.image_store)  # a malformed address fails at start, not at the first image
        elif "://" in self.image_store:
            raise ValueError(f"IMAGE_STORE: a directory or s3://bucket/prefix, not {self.image_store!r}")
        return self

    @model_validator(mode="after")
    def _secret(self) -> CommonSettings:
        listed = parse_secrets(self.packline_secrets, self.packline_secret)
        # `packline_secret` is always the signing secret: the first of the list.
        self.packline_secret = listed[0] if listed else load_or_create_secret(self.var_dir / "secret")
        return self

    @property
    def keyring(self) -> Keyring:
        """Every secret in force; the first signs (`packline_secret`), each one verifies."""
        return Keyring(parse_secrets(self.packline_secrets, self.packline_secret))

    @property
    def kafka(self) -> KafkaConfig:
        password = self.kafka_sasl_password.get_secret_value() if self.kafka_sasl_password else None
        return KafkaConfig(
            self.kafka_bootstrap_servers, self.kafka_security_protocol, self.kafka_sasl_mechanism,
            self.kafka_sasl_username, password, self.kafka_ssl_cafile, self.kafka_ssl_certfile, self.kafka_ssl_keyfile,
        )

    @property
    def topics(self) -> Topics:
        return Topics(self.topic_prefix)

    @property
    def images_dir(self) -> Path:
        return self.var_dir / "images"


def load_or_create_secret(path: Path) -> str:
    """A generated per-install secret beats a hard-coded default; say so loudly anyway."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(32)
    try:
        with open(path, "x") as fh:  # another process may be creating it right now
            fh.write(value)
        path.chmod(0o600)
        log.warning("PACKLINE_SECRET not set: generated %s (set it explicitly in production)", path)
        return value
    except FileExistsError:
        return path.read_text().strip()
