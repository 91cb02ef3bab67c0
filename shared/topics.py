"""The topic registry: every topic of the contract declared once, with the event types it
carries, what its messages are keyed by, and its broker config.

Producers name a topic through `Topics` (which applies a deployment's prefix); consumers
say which `TopicSpec` they read and get its events typed (`shared.worker.Route`).
Partition counts come from the deployment (`TOPIC_PARTITIONS`) unless a spec fixes one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

from shared.events import (
    AccountCreate,
    ApiInstanceSeen,
    BalanceQuery,
    CreditsBalance,
    CreditsChanged,
    CreditsGrant,
    DlqReplayed,
    Event,
    IdempotencyClaimed,
    ImageCompleted,
    ImageFailed,
    ImageJob,
    ImageReplayed,
    ImageStatus,
    KeyOldSecretUsed,
    KeyRevoked,
    NamedKeyCreated,
    NamedKeyRevoked,
    NamedKeyUsed,
    PackAccepted,
    PackCancel,
    PackCancelled,
    PackCommandResult,
    PackRegenerate,
    PackRequested,
    PackStatus,
    ProviderControl,
    WebhookAttempted,
    WebhookDelivery,
    WebhookEndpointDeleted,
    WebhookEndpointRegistered,
)

E = TypeVar("E", bound=Event)
Key = Literal[
    "user_id", "pack_id", "operator", "original key", "user_id or key_id", "key_id or key_id/used",
    "user_id/idempotency_key", "instance_id", "endpoint_id", "provider",
]

# Fixed backoff tiers in seconds; a job waits in the smallest tier that covers its delay.
RETRY_TIERS_S: tuple[int, ...] = (1, 5, 30, 120, 300)
# Dead letters and the audit trail are read by operators weeks later.
KEEP_FOREVER: Mapping[str, str] = {"retention.ms": "-1"}


@dataclass(frozen=True)
class TopicSpec(Generic[E]):
    name: str  # without the deployment's prefix
    events: tuple[type[E], ...]  # empty: raw copies of other topics' messages (dead letters)
    key: Key
    doc: str
    config: Mapping[str, str] = field(default_factory=dict)
    partitions: int | None = None  # None: the deployment's TOPIC_PARTITIONS


ImageResult = ImageCompleted | ImageFailed | ImageReplayed | PackCancel | PackRegenerate
PackFeed = PackStatus | ImageStatus
CreditsCommand = AccountCreate | CreditsGrant | BalanceQuery
CreditsReply = CreditsChanged | CreditsBalance
Revocation = KeyRevoked | NamedKeyRevoked
KeyRecord = NamedKeyCreated | NamedKeyRevoked | NamedKeyUsed
AuditRecord = DlqReplayed | NamedKeyCreated | NamedKeyRevoked | KeyRevoked | KeyOldSecretUsed | ProviderControl

PACKS_REQUESTED = TopicSpec[PackRequested]("packs.requested", (PackRequested,), "user_id", "pack requests from the api or any publisher")
PACKS_ACCEPTED = TopicSpec[PackAccepted]("packs.accepted", (PackAccepted,), "pack_id", "packs debited by credits, for generation")
PACKS_STATUS = TopicSpec[PackFeed](
    "packs.status", (PackStatus, ImageStatus), "pack_id", "every status change of a pack and its images, in order per pack",
)
IMAGES_JOBS = TopicSpec[ImageJob]("images.jobs", (ImageJob,), "pack_id", "one message per image to make")
# Everything that changes a pack after it was accepted, in one log per pack: image outcomes,
# replays, and the owner's cancels and regenerations, so that their order is the log's.
IMAGES_RESULTS = TopicSpec[ImageResult](
    "images.results", (ImageCompleted, ImageFailed, ImageReplayed, PackCancel, PackRegenerate), "pack_id",
    "image outcomes, replays, cancels and regenerations, for the ledger",
)
# Credits' answers to cancels and regenerations; read by every api instance from its end.
PACKS_REPLIES = TopicSpec[PackCommandResult](
    "packs.replies", (PackCommandResult,), "pack_id", "credits' answers to cancels and regenerations, for the api",
    {"retention.ms": str(3600 * 1000)},
)
# Cancelled packs, read by every generation process (from the start: a day is kept).
PACKS_CANCELLED = TopicSpec[PackCancelled](
    "packs.cancelled", (PackCancelled,), "pack_id", "cancelled packs: generation stops their work",
    {"retention.ms": str(24 * 3600 * 1000)},
)
IMAGES_DLQ = TopicSpec[ImageJob]("images.dlq", (ImageJob,), "pack_id", "image jobs that failed for good; replayable", KEEP_FOREVER)
CREDITS_COMMANDS = TopicSpec[CreditsCommand](
    "credits.commands", (AccountCreate, CreditsGrant, BalanceQuery), "user_id", "account and balance commands",
)
CREDITS_EVENTS = TopicSpec[CreditsReply](
    "credits.events", (CreditsChanged, CreditsBalance), "user_id", "every balance change, and replies to balance queries",
)
INVALID_DLQ = TopicSpec[Event](
    "invalid.dlq", (), "original key", "messages of any topic that could not be parsed or validated", KEEP_FOREVER,
)
OPS_AUDIT = TopicSpec[AuditRecord](
    "ops.audit", (DlqReplayed, NamedKeyCreated, NamedKeyRevoked, KeyRevoked, KeyOldSecretUsed, ProviderControl), "operator",
    "what operators did, and every key event (created, revoked, verified by a retiring secret)", KEEP_FOREVER,
)
# Compacted: only the newest user-wide revocation per user (keyed by user id) and each
# revoked named key (keyed by key id) matter, for ever. Read to its end before any key is trusted.
AUTH_REVOCATIONS = TopicSpec[Revocation](
    "auth.revocations", (KeyRevoked, NamedKeyRevoked), "user_id or key_id", "API key revocations",
    {"cleanup.policy": "compact"},
)
# The key registry: what each named key is (created, then possibly revoked: both keyed by key
# id, so compaction keeps the newest) and when it was last used (keyed `<key id>/used`).
AUTH_KEYS = TopicSpec[KeyRecord](
    "auth.keys", (NamedKeyCreated, NamedKeyRevoked, NamedKeyUsed), "key_id or key_id/used",
    "the registry of named API keys: names, scopes, created, last used, revoked", {"cleanup.policy": "compact"},
)
# The api's idempotency index: which body each (user, Idempotency-Key) was first used with.
# Compacted (one record per key) and deleted after IDEMPOTENCY_KEEP_MS (keys expire like at any
# payment API); records stay at least an hour before compaction may drop them, so a conflicting
# claim is always followed by the winner's again before its first copy can be compacted away.
IDEMPOTENCY_KEEP_MS = 7 * 24 * 3600 * 1000
API_IDEMPOTENCY = TopicSpec[IdempotencyClaimed](
    "api.idempotency", (IdempotencyClaimed,), "user_id/idempotency_key",
    "the body hash each Idempotency-Key was first used with (409 for another body, on every api instance)",
    {"cleanup.policy": "compact,delete", "retention.ms": str(IDEMPOTENCY_KEEP_MS), "min.compaction.lag.ms": "3600000"},
)
# Heartbeats of the live api instances, which divide the per-user rate limit between them.
API_INSTANCES = TopicSpec[ApiInstanceSeen](
    "api.instances", (ApiInstanceSeen,), "instance_id", "heartbeats of the live api instances (the rate limit's divisor)",
    {"cleanup.policy": "compact,delete", "retention.ms": str(24 * 3600 * 1000)},
)
# The provider switch: one key ("provider"), compacted, so the newest pause or resume is
# what every generation process reads at start and follows after (services/generation/control.py).
GENERATION_CONTROL = TopicSpec[ProviderControl](
    "generation.control", (ProviderControl,), "provider", "provider calls paused or resumed by an operator",
    {"cleanup.policy": "compact"}, partitions=1,
)
RETRY_TIERS: tuple[TopicSpec[ImageJob], ...] = tuple(
    TopicSpec[ImageJob](f"images.retry.{s}s", (ImageJob,), "pack_id", f"image jobs waiting {s} s before their next attempt")
    for s in RETRY_TIERS_S
)

# Webhooks (docs/webhooks.md). The endpoints: compacted, the newest record per endpoint id
# (registered, or deleted for good). Deliveries wait in their own retry tiers, like image jobs.
WebhookEndpointRecord = WebhookEndpointRegistered | WebhookEndpointDeleted
WEBHOOKS_ENDPOINTS = TopicSpec[WebhookEndpointRecord](
    "webhooks.endpoints", (WebhookEndpointRegistered, WebhookEndpointDeleted), "endpoint_id",
    "the users' webhook endpoints: registered, or deleted", {"cleanup.policy": "compact"},
)
WEBHOOKS_DELIVERIES = TopicSpec[WebhookDelivery](
    "webhooks.deliveries", (WebhookDelivery,), "endpoint_id", "one message per delivery to one endpoint",
)
WEBHOOKS_DLQ = TopicSpec[WebhookDelivery](
    "webhooks.dlq", (WebhookDelivery,), "endpoint_id", "deliveries that failed every attempt; replayable", KEEP_FOREVER,
)
# What each attempt got: read by the api for /v1/webhooks/{id}/deliveries (the last 100 per endpoint).
WEBHOOKS_ATTEMPTS = TopicSpec[WebhookAttempted](
    "webhooks.attempts", (WebhookAttempted,), "endpoint_id", "the outcome of every webhook delivery attempt",
    {"retention.ms": str(7 * 24 * 3600 * 1000)},
)
WEBHOOK_RETRY_TIERS: tuple[TopicSpec[WebhookDelivery], ...] = tuple(
    TopicSpec[WebhookDelivery](
        f"webhooks.retry.{s}s", (WebhookDelivery,), "endpoint_id", f"webhook deliveries waiting {s} s before their next attempt",
    )
    for s in RETRY_TIERS_S
)

REGISTRY: tuple[TopicSpec[Any], ...] = (
    PACKS_REQUESTED, PACKS_ACCEPTED, PACKS_STATUS, IMAGES_JOBS, IMAGES_RESULTS, PACKS_REPLIES, PACKS_CANCELLED, IMAGES_DLQ,
    CREDITS_COMMANDS,
    CREDITS_EVENTS, INVALID_DLQ, OPS_AUDIT, AUTH_REVOCATIONS, AUTH_KEYS, API_IDEMPOTENCY, API_INSTANCES, GENERATION_CONTROL,
    *RETRY_TIERS,
    WEBHOOKS_ENDPOINTS, WEBHOOKS_DELIVERIES, WEBHOOKS_DLQ, WEBHOOKS_ATTEMPTS, *WEBHOOK_RETRY_TIERS,
)


@dataclass(frozen=True)
class Topics:
    """The topic names of one deployment: the registry's names behind an optional prefix,
    which isolates a deployment (or one test) on a shared cluster."""

    prefix: str = ""

    def name(self, spec: TopicSpec[Any]) -> str:
        return f"{self.prefix}{spec.name}"

    def all(self) -> list[str]:
        return [self.name(spec) for spec in REGISTRY]

    def retry(self, tier_s: int) -> str:
        return self.name(RETRY_TIERS[RETRY_TIERS_S.index(tier_s)])

    @property
    def retry_topics(self) -> list[str]:
        return [self.name(spec) for spec in RETRY_TIERS]

    @property
    def packs_requested(self) -> str:
        return self.name(PACKS_REQUESTED)

    @property
    def packs_accepted(self) -> str:
        return self.name(PACKS_ACCEPTED)

    @property
    def packs_status(self) -> str:
        return self.name(PACKS_STATUS)

    @property
    def packs_replies(self) -> str:
        return self.name(PACKS_REPLIES)

    @property
    def packs_cancelled(self) -> str:
        return self.name(PACKS_CANCELLED)

    @property
    def images_jobs(self) -> str:
        return self.name(IMAGES_JOBS)

    @property
    def images_results(self) -> str:
        return self.name(IMAGES_RESULTS)

    @property
    def images_dlq(self) -> str:
        return self.name(IMAGES_DLQ)

    @property
    def credits_commands(self) -> str:
        return self.name(CREDITS_COMMANDS)

    @property
    def credits_events(self) -> str:
        return self.name(CREDITS_EVENTS)

    @property
    def invalid_dlq(self) -> str:
        return self.name(INVALID_DLQ)

    @property
    def ops_audit(self) -> str:
        return self.name(OPS_AUDIT)

    @property
    def generation_control(self) -> str:
        return self.name(GENERATION_CONTROL)

    @property
    def auth_revocations(self) -> str:
        return self.name(AUTH_REVOCATIONS)

    @property
    def auth_keys(self) -> str:
        return self.name(AUTH_KEYS)

    @property
    def api_idempotency(self) -> str:
        return self.name(API_IDEMPOTENCY)

    @property
    def api_instances(self) -> str:
        return self.name(API_INSTANCES)

    @property
    def webhooks_endpoints(self) -> str:
        return self.name(WEBHOOKS_ENDPOINTS)

    @property
    def webhooks_deliveries(self) -> str:
        return self.name(WEBHOOKS_DELIVERIES)

    @property
    def webhooks_dlq(self) -> str:
        return self.name(WEBHOOKS_DLQ)

    @property
    def webhooks_attempts(self) -> str:
        return self.name(WEBHOOKS_ATTEMPTS)

    def webhook_retry(self, tier_s: int) -> str:
        return self.name(WEBHOOK_RETRY_TIERS[RETRY_TIERS_S.index(tier_s)])

    @property
    def webhook_retry_topics(self) -> list[str]:
        return [self.name(spec) for spec in WEBHOOK_RETRY_TIERS]
