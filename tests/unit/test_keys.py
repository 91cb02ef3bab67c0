"""Scopes, fail-closed readiness, per-key and user-wide revocation, the key registry and
the reports of key use, in memory (no broker)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, cast

import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient

from shared.auth import Keyring, make_api_key, make_named_key
from shared.consumer import Record
from shared.errors import InvalidMessage
from shared.events import Decoder, KeyOldSecretUsed, KeyRevoked, NamedKeyCreated, NamedKeyRevoked, NamedKeyUsed
from shared.http import ApiKey, KeyCheck, Scoped
from shared.kafka import KafkaConfig, Outgoing, Publisher
from shared.keys import KeyUsage, Registry, registry_of, revoked_event, revoked_messages
from shared.revocations import Revocations
from shared.topics import AUTH_REVOCATIONS, Topics

K1, K2 = "key_00000000000000a1", "key_00000000000000b2"


def revocations(ready: bool = True) -> Revocations:
    r = Revocations(KafkaConfig("127.0.0.1:1"), "auth.revocations")
    if ready:
        r.ready.set()
    return r


def app_with(check: KeyCheck) -> TestClient:
    app = FastAPI()
    app.state.keys = check

    @app.post("/write")
    def write(key: Annotated[ApiKey, Depends(Scoped("packs:write"))]) -> dict[str, Any]:
        return {"user": key.user_id, "key": key.key_id}

    @app.get("/read")
    def read(key: Annotated[ApiKey | None, Depends(Scoped("packs:read", optional=True))]) -> dict[str, Any]:
        return {"user": key.user_id if key else None}

    return TestClient(app)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_a_key_without_the_scope_gets_403_naming_it() -> None:
    client = app_with(KeyCheck(Keyring(("s",)), revocations()))
    reader = make_named_key("s", "alice", K1, ["packs:read"])
    refused = client.post("/write", headers=bearer(reader))
    assert refused.status_code == 403 and refused.json()["detail"] == "API key lacks scope packs:write"
    assert client.get("/read", headers=bearer(reader)).json() == {"user": "alice"}
    assert client.post("/write", headers=bearer(make_api_key("s", "alice"))).json() == {"user": "alice", "key": None}
    assert client.post("/write").status_code == 401
    assert client.get("/read").json() == {"user": None}  # optional: a stream token may stand in
    assert client.get("/read", headers=bearer("pk_forged.x")).status_code == 401


def test_every_key_is_refused_with_503_until_the_revocations_are_read() -> None:
    feed = revocations(ready=False)
    client = app_with(KeyCheck(Keyring(("s",)), feed))
    key = make_api_key("s", "alice")
    early = client.post("/write", headers=bearer(key))
    assert early.status_code == 503 and early.headers["Retry-After"] == "1"
    assert client.get("/read", headers=bearer(key)).status_code == 503
    feed.ready.set()
    assert client.post("/write", headers=bearer(key)).status_code == 200


def test_revoking_one_key_leaves_the_others_and_revoke_key_ends_them_all() -> None:
    feed = revocations()
    client = app_with(KeyCheck(Keyring(("s",)), feed))
    one, two = make_named_key("s", "alice", K1, ["packs:write"]), make_named_key("s", "alice", K2, ["packs:write"])
    created = datetime(2026, 1, 1, tzinfo=UTC)
    feed.apply(NamedKeyRevoked(user_id="alice", key_id=K1, name="ci", scopes=["packs:write"], generation=0,
                               created_at=created, by="user:alice"))
    assert client.post("/write", headers=bearer(one)).json()["detail"] == "API key revoked"
    assert client.post("/write", headers=bearer(two)).status_code == 200
    assert client.post("/write", headers=bearer(make_api_key("s", "alice"))).status_code == 200
    feed.apply(KeyRevoked(user_id="alice", below_generation=1))
    assert client.post("/write", headers=bearer(two)).status_code == 401
    assert client.post("/write", headers=bearer(make_api_key("s", "alice"))).status_code == 401
    assert client.post("/write", headers=bearer(make_api_key("s", "alice", 1))).status_code == 200
    assert feed.allows("alice", 1, K2) and not feed.allows("alice", 1, K1)  # a revoked id stays revoked
    feed.apply(KeyRevoked(user_id="alice", below_generation=1))  # an older floor never lowers the newest
    assert feed.min_generation["alice"] == 1


def test_listeners_hear_revocations_once_the_feed_is_ready() -> None:
    feed = revocations(ready=False)
    heard: list[str] = []
    feed.listeners.append(heard.append)
    feed.apply(KeyRevoked(user_id="alice", below_generation=1))
    feed.ready.set()
    feed.apply(KeyRevoked(user_id="bob", below_generation=1))
    assert heard == ["bob"]


def test_the_revocation_decoder_agrees_with_decode() -> None:
    decode = Decoder(AUTH_REVOCATIONS.events)
    ev = KeyRevoked(user_id="alice", below_generation=2)
    assert decode(ev.encode()) == ev
    for bad, reason in [
        (b'{"type": "key.revoked", "user_id": "a", "below_generation": 1}', "unsupported version"),
        (b'{"type": "key.revoked", "version": 1, "user_id": "a b", "below_generation": 1}', "fails its schema"),
        (NamedKeyUsed(user_id="a", key_id=K1, service="api").encode(), "does not belong"),
        (b"{", "not JSON"),
        (None, "empty"),
    ]:
        with pytest.raises(InvalidMessage, match=reason):
            decode(bad)


def test_the_registry_lists_keys_with_last_use_and_revocation_in_any_order() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    created = NamedKeyCreated(user_id="alice", key_id=K1, name="ci", scopes=["packs:read"], generation=0, by="user:alice",
                              occurred_at=t0)
    other = NamedKeyCreated(user_id="alice", key_id=K2, name="laptop", scopes=["packs:write", "keys"], generation=0,
                            by="ops", occurred_at=t0 + timedelta(seconds=1))
    used = NamedKeyUsed(user_id="alice", key_id=K1, service="api", occurred_at=t0 + timedelta(minutes=5))
    older_use = NamedKeyUsed(user_id="alice", key_id=K1, service="notifier", occurred_at=t0 + timedelta(minutes=1))
    registry = registry_of([used, other, created, older_use])  # used before created: another partition
    feed = revocations()
    views = [registry.view(e, feed) for e in registry.of_user("alice")]
    assert [v["id"] for v in views] == [K1, K2]
    assert views[0]["last_used_at"] == used.occurred_at and views[1]["last_used_at"] is None
    assert not views[0]["revoked"]
    # Compaction may keep only the revocation: it still says what the key was.
    revoked = revoked_event(registry.keys[K1], by="user:alice")
    compacted = Registry()
    compacted.apply(revoked)
    view = compacted.view(compacted.keys[K1], None)
    assert view["name"] == "ci" and view["created_at"] == t0 and view["revoked"] and view["revoked_at"] == revoked.occurred_at
    # A user-wide revocation shows on every named key below the floor.
    feed.apply(KeyRevoked(user_id="alice", below_generation=1))
    assert all(registry.view(e, feed)["revoked"] for e in registry.of_user("alice"))


def test_a_revocation_goes_to_the_feed_the_registry_and_the_audit_trail() -> None:
    entry = registry_of([NamedKeyCreated(user_id="alice", key_id=K1, name="ci", scopes=["keys"], generation=0, by="x")]).keys[K1]
    out = revoked_messages(Topics("p."), revoked_event(entry, by="user:alice"))
    assert [(o.topic, o.key) for o in out] == [
        ("p.auth.revocations", K1.encode()), ("p.auth.keys", K1.encode()), ("p.ops.audit", b"user:alice"),
    ]


class FakePublisher:
    def __init__(self) -> None:
        self.sent: list[Outgoing] = []

    async def send(self, messages: list[Outgoing]) -> None:
        self.sent.extend(messages)


def test_usage_reports_last_use_now_and_then_and_old_secrets_once() -> None:
    async def run() -> list[Outgoing]:
        publisher = FakePublisher()
        usage = KeyUsage(cast(Publisher, publisher), Topics(), "api", used_every_s=60)
        ring = Keyring(("new", "old"))
        named = ring.verify_key(make_named_key("old", "alice", K1, ["keys"]))
        account = ring.verify_key(make_api_key("new", "bob"))
        for _ in range(3):
            usage.seen(named)
            usage.seen(account)
        await usage.drain()
        return publisher.sent

    sent = asyncio.run(run())
    assert [(o.topic, o.key) for o in sent] == [("auth.keys", f"{K1}/used".encode()), ("ops.audit", b"api")]
    audit = KeyOldSecretUsed.model_validate_json(sent[1].value)
    assert (audit.user_id, audit.key_id, audit.secret_index) == ("alice", K1, 1)


class FakeRecord:
    def __init__(self, value: bytes | None, offset: int) -> None:
        self.value, self.partition, self.offset = value, 0, offset


def test_the_reader_applies_the_feed_and_skips_what_it_cannot_read() -> None:
    feed = revocations(ready=False)
    created = datetime(2026, 1, 1, tzinfo=UTC)
    feed.handle(cast(list[Record], [
        FakeRecord(KeyRevoked(user_id="alice", below_generation=2).encode(), 0),
        FakeRecord(b"not json", 1),
        FakeRecord(None, 2),  # a tombstone
        FakeRecord(NamedKeyRevoked(user_id="bob", key_id=K1, name="n", scopes=["keys"], generation=0, created_at=created,
                                   by="ops").encode(), 3),
    ]))
    assert feed.records == 4 and feed.min_generation == {"alice": 2} and feed.revoked_keys == {K1}
