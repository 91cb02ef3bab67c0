"""Topic names of the contract (DESIGN.md), optionally prefixed for isolation."""

from __future__ import annotations

from dataclasses import dataclass

# Fixed backoff tiers in seconds; a job waits in the smallest tier that covers its delay.
RETRY_TIERS_S: tuple[int, ...] = (1, 5, 30, 120, 300)


@dataclass(frozen=True)
class Topics:
    prefix: str = ""

    def _t(self, name: str) -> str:
        return f"{self.prefix}{name}"

    @property
    def packs_requested(self) -> str:
        return self._t("packs.requested")

    @property
    def packs_accepted(self) -> str:
        return self._t("packs.accepted")

    @property
    def packs_status(self) -> str:
        return self._t("packs.status")

    @property
    def images_jobs(self) -> str:
        return self._t("images.jobs")

    @property
    def images_results(self) -> str:
        return self._t("images.results")

    @property
    def images_dlq(self) -> str:
        return self._t("images.dlq")

    @property
    def credits_commands(self) -> str:
        return self._t("credits.commands")

    @property
    def credits_events(self) -> str:
        return self._t("credits.events")

    @property
    def invalid_dlq(self) -> str:
        return self._t("invalid.dlq")

    @property
    def ops_audit(self) -> str:
        return self._t("ops.audit")

    @property
    def auth_revocations(self) -> str:
        return self._t("auth.revocations")

    def retry(self, tier_s: int) -> str:
        return self._t(f"images.retry.{tier_s}s")

    @property
    def retry_topics(self) -> list[str]:
        return [self.retry(t) for t in RETRY_TIERS_S]

    def all(self) -> list[str]:
        return [
            self.packs_requested, self.packs_accepted, self.packs_status, self.images_jobs,
            self.images_results, self.images_dlq, self.credits_commands, self.credits_events,
            self.invalid_dlq, self.ops_audit, self.auth_revocations, *self.retry_topics,
        ]
