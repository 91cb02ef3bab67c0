"""Named API keys: the registry as the api and the CLI see it (`auth.keys`), what creating
and revoking a key publishes, and the reports of key use (last used on `auth.keys`, keys
verified by a retiring secret on `ops.audit`).

A key itself is a stateless signed token (`shared.auth`): verifying it needs no registry.
The registry only says what exists (names, scopes, created, last used, revoked) for the
people managing keys. What is *refused* is decided by `auth.revocations` alone
(`shared.revocations`), which is why a revocation goes there as well as here."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shared.auth import KeyClaims
from shared.consumer import EventFeed
from shared.errors import BrokerUnavailable
from shared.events import Event, KeyOldSecretUsed, NamedKeyCreated, NamedKeyRevoked, NamedKeyUsed
from shared.kafka import KafkaConfig, Outgoing, Publisher
from shared.revocations import Revocations
from shared.topics import AUTH_KEYS, KeyRecord, Topics

log = logging.getLogger("packline.keys")
USED_EVERY_S = 300.0  # a key's last use is reported at most this often per process
REPORTS_KEPT = 100_000  # keys remembered per process for the two reports above


@dataclass
class KeyEntry:
    user_id: str
    key_id: str
    name: str
    scopes: list[str]
    generation: int
    created_at: datetime
    revoked_at: datetime | None = None

    def view(self, revocations: Revocations | None, last_used_at: datetime | None) -> dict[str, Any]:
        """What `GET /v1/keys` and `packline accounts keys list` show. A key is revoked by
        its own revocation, or by one of its user's (`revoke-key`)."""
        revoked, revoked_at = self.revoked_at is not None, self.revoked_at
        if revocations is not None and not revocations.allows(self.user_id, self.generation, self.key_id):
            revoked = True
            if revoked_at is None and self.key_id not in revocations.revoked_keys:
                revoked_at = revocations.revoked_since.get(self.user_id)
        return {
            "id": self.key_id, "name": self.name, "scopes": self.scopes, "created_at": self.created_at,
            "last_used_at": last_used_at, "revoked": revoked, "revoked_at": revoked_at,
        }


@dataclass
class Registry:
    """The named keys, from `auth.keys` records in any order across partitions."""

    keys: dict[str, KeyEntry] = field(default_factory=dict)
    by_user: dict[str, list[str]] = field(default_factory=dict)
    last_used: dict[str, datetime] = field(default_factory=dict)

    def apply(self, ev: KeyRecord) -> None:
        if isinstance(ev, NamedKeyUsed):
            if ev.key_id not in self.last_used or self.last_used[ev.key_id] < ev.occurred_at:
                self.last_used[ev.key_id] = ev.occurred_at
            return
        entry = self.keys.get(ev.key_id)
        if entry is None:
            created = ev.created_at if isinstance(ev, NamedKeyRevoked) else ev.occurred_at
            entry = KeyEntry(ev.user_id, ev.key_id, ev.name, list(ev.scopes), ev.generation, created)
            self.keys[ev.key_id] = entry
            self.by_user.setdefault(ev.user_id, []).append(ev.key_id)
        if isinstance(ev, NamedKeyRevoked) and entry.revoked_at is None:
            entry.revoked_at = ev.occurred_at

    def of_user(self, user_id: str) -> list[KeyEntry]:
        return sorted((self.keys[k] for k in self.by_user.get(user_id, ())), key=lambda e: (e.created_at, e.key_id))

    def view(self, entry: KeyEntry, revocations: Revocations | None) -> dict[str, Any]:
        return entry.view(revocations, self.last_used.get(entry.key_id))


class KeyRegistry(EventFeed[KeyRecord]):
    """The api's copy of `auth.keys`, followed for ever (for `GET /v1/keys` and
    `DELETE /v1/keys/{id}`; never for verifying a key)."""

    name = "key-registry"

    def __init__(self, kafka: KafkaConfig, topic: str) -> None:
        super().__init__(kafka, topic, "packline-key-registry", AUTH_KEYS.events)
        self.registry = Registry()

    def apply(self, event: KeyRecord) -> None:
        self.registry.apply(event)


def created_messages(topics: Topics, ev: NamedKeyCreated) -> list[Outgoing]:
    """The registry learns the key; the audit trail records who made it."""
    return [Outgoing.of(topics.auth_keys, ev, ev.key_id), Outgoing.of(topics.ops_audit, ev, ev.by)]


def revoked_event(entry: KeyEntry, by: str) -> NamedKeyRevoked:
    return NamedKeyRevoked(
        user_id=entry.user_id, key_id=entry.key_id, name=entry.name, scopes=entry.scopes, generation=entry.generation,
        created_at=entry.created_at, by=by,
    )


def revoked_messages(topics: Topics, ev: NamedKeyRevoked) -> list[Outgoing]:
    """The revocation feed refuses the key; the registry shows it revoked; the audit trail
    records who did it. Sent together and acknowledged together."""
    return [
        Outgoing.of(topics.auth_revocations, ev, ev.key_id), Outgoing.of(topics.auth_keys, ev, ev.key_id),
        Outgoing.of(topics.ops_audit, ev, ev.by),
    ]


def registry_of(records: Iterable[Event]) -> Registry:
    registry = Registry()
    for ev in records:
        if isinstance(ev, NamedKeyCreated | NamedKeyRevoked | NamedKeyUsed):
            registry.apply(ev)
    return registry


class KeyUsage:
    """Reports from the edge, never in a request's way (sent in the background; a failure
    is logged and forgotten): a named key's last use (`named_key.used` on `auth.keys`, at
    most every USED_EVERY_S per key), and a key verified by a secret that no longer signs
    (`key.old_secret_used` on `ops.audit`, at most once per key per process)."""

    def __init__(self, publisher: Publisher, topics: Topics, service: str, used_every_s: float = USED_EVERY_S) -> None:
        self.publisher, self.topics, self.service, self.used_every_s = publisher, topics, service, used_every_s
        self._used: dict[str, float] = {}
        self._old_secret: set[tuple[str, int, str | None]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def seen(self, key: KeyClaims) -> None:
        out: list[Outgoing] = []
        if key.key_id is not None:
            now = time.monotonic()
            if now - self._used.get(key.key_id, -self.used_every_s) >= self.used_every_s:
                if len(self._used) >= REPORTS_KEPT:
                    self._used.clear()  # at worst a few more reports
                self._used[key.key_id] = now
                used = NamedKeyUsed(user_id=key.user_id, key_id=key.key_id, service=self.service)
                out.append(Outgoing.of(self.topics.auth_keys, used, f"{key.key_id}/used"))
        if key.secret_index > 0:
            ident = (key.user_id, key.generation, key.key_id)
            if ident not in self._old_secret and len(self._old_secret) < REPORTS_KEPT:
                self._old_secret.add(ident)
                log.warning("key %s of %s was verified by retiring secret #%d: it stops working when that secret is dropped",
                            key.key_id or f"account/{key.generation}", key.user_id, key.secret_index + 1)
                audit = KeyOldSecretUsed(user_id=key.user_id, key_id=key.key_id, generation=key.generation,
                                         secret_index=key.secret_index, service=self.service)
                out.append(Outgoing.of(self.topics.ops_audit, audit, self.service))
        if out:
            task = asyncio.get_running_loop().create_task(self._send(out))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, messages: list[Outgoing]) -> None:
        try:
            await self.publisher.send(messages)
        except BrokerUnavailable as exc:
            log.warning("could not report key use: %s", exc)

    async def drain(self, timeout_s: float = 2.0) -> None:
        """Give reports in flight a moment at shutdown."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout_s)
