"""Webhooks, pure logic: Standard Webhooks signatures and the receiver's `verify`, derived
secrets and rotation, which targets are refused, the backoff schedule, and which
deliveries a status event makes."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from services.notifier.webhooks.handlers import Outcome, RetryPolicy, after_attempt, deliveries, event_type, pack_data
from shared.events import (
    ImageEntry,
    ImageState,
    ImageStatus,
    PackState,
    PackStatus,
    WebhookAttempted,
    WebhookDelivery,
    WebhookEndpointDeleted,
    WebhookEndpointRegistered,
    decode,
)
from shared.kafka import header
from shared.topics import RETRY_TIERS_S, Topics
from shared.webhook_endpoints import EndpointIndex
from shared.webhooks import (
    AllowList,
    TargetRefused,
    backoff_s,
    body_of,
    check_addresses,
    check_target,
    endpoint_secret,
    parse_target,
    secret_ref,
    server_secret_for,
    sign,
    signed_headers,
    tier_for,
    verify,
)

# The example of the Standard Webhooks specification (and of its reference libraries).
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID, SPEC_TS, SPEC_BODY = "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
T = Topics("t.")


def spec_headers(signature: str = SPEC_SIGNATURE) -> dict[str, str]:
    return {"webhook-id": SPEC_ID, "webhook-timestamp": str(SPEC_TS), "webhook-signature": signature}


def test_signature_is_the_specifications() -> None:
    assert sign(SPEC_SECRET, SPEC_ID, SPEC_TS, SPEC_BODY) == SPEC_SIGNATURE


def test_verify_accepts_the_specifications_example() -> None:
    assert verify(SPEC_SECRET, spec_headers(), SPEC_BODY, now=SPEC_TS + 10)
    upper = {k.title(): v for k, v in spec_headers().items()}
    assert verify(SPEC_SECRET, upper, SPEC_BODY, now=SPEC_TS)


@pytest.mark.parametrize("change", ["body", "secret", "id", "old", "future", "version", "missing", "garbage"])
def test_verify_refuses_anything_else(change: str) -> None:
    secret, headers, body, now = SPEC_SECRET, spec_headers(), SPEC_BODY, SPEC_TS
    if change == "body":
        body = b'{"test": 2432232315}'
    elif change == "secret":
        secret = endpoint_secret("other", "we_0000000000000000")
    elif change == "id":
        headers["webhook-id"] = "msg_other"
    elif change == "old":
        now = SPEC_TS + 301
    elif change == "future":
        now = SPEC_TS - 301
    elif change == "version":
        headers["webhook-signature"] = SPEC_SIGNATURE.replace("v1,", "v2,")
    elif change == "missing":
        del headers["webhook-timestamp"]
    else:
        headers["webhook-timestamp"] = "soon"
    assert not verify(secret, headers, body, now=now)


def test_one_matching_signature_of_several_is_enough() -> None:
    several = f"v1,{base64.b64encode(b'x' * 32).decode()} {SPEC_SIGNATURE}"
    assert verify(SPEC_SECRET, spec_headers(several), SPEC_BODY, now=SPEC_TS)


def test_signed_headers_round_trip_with_a_derived_secret() -> None:
    secret = endpoint_secret("server-secret", "we_0123456789abcdef")
    body = body_of("pack.terminal", {"pack_id": "p", "status": "COMPLETED"})
    headers = signed_headers(secret, "msg_1", body, now=1_700_000_000)
    assert headers["webhook-timestamp"] == "1700000000"
    assert verify(secret, headers, body, now=1_700_000_001)
    assert json.loads(body) == {"type": "pack.terminal", "data": {"pack_id": "p", "status": "COMPLETED"}}


def test_derived_secrets_are_32_bytes_per_endpoint_and_server_secret() -> None:
    one = endpoint_secret("s1", "we_0000000000000001")
    assert one.startswith("whsec_") and len(base64.b64decode(one[6:])) == 32
    assert one == endpoint_secret("s1", "we_0000000000000001")
    assert one != endpoint_secret("s1", "we_0000000000000002")
    assert one != endpoint_secret("s2", "we_0000000000000001")


def test_rotation_finds_the_server_secret_an_endpoint_was_made_with() -> None:
    ref = secret_ref("old")
    assert server_secret_for(ref, ("new", "old")) == "old"  # rotated: the endpoint's secret is unchanged
    assert server_secret_for(ref, ("new",)) is None  # retired: its endpoints cannot be signed any more
    assert secret_ref("old") != secret_ref("new") and "old" not in ref


@pytest.mark.parametrize("address", [
    "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0", "::1", "fe80::1",
    "fc00::1", "::ffff:127.0.0.1", "224.0.0.1",
])
def test_internal_addresses_are_refused(address: str) -> None:
    with pytest.raises(TargetRefused, match="private, loopback or link-local"):
        check_addresses("h.example", [address], AllowList.parse(""))


def test_a_name_is_refused_if_any_of_its_addresses_is_internal() -> None:
    with pytest.raises(TargetRefused, match=r"10\.0\.0\.5"):
        check_addresses("h.example", ["93.184.216.34", "10.0.0.5"], AllowList.parse(""))
    check_addresses("h.example", ["93.184.216.34", "2606:2800:220:1::1"], AllowList.parse(""))


def test_the_allow_list_takes_cidrs_and_host_names() -> None:
    allowed = AllowList.parse(" 127.0.0.1/32, 10.0.0.0/8 ,Receiver.Internal. ")
    check_addresses("h", ["127.0.0.1", "10.9.9.9"], allowed)
    check_addresses("receiver.internal", ["192.168.0.1"], allowed)
    with pytest.raises(TargetRefused):
        check_addresses("h", ["127.0.0.2"], allowed)


def test_target_urls() -> None:
    assert parse_target("https://Hooks.Example.com:8443/in") == ("https", "hooks.example.com")
    for url, why in [("ftp://x.example/", "http"), ("http:///path", "no host"), ("http://u:p@x.example/", "credentials"),
                     ("http://x.example:99999/", "port")]:
        with pytest.raises(TargetRefused, match=why):
            parse_target(url)
    with pytest.raises(TargetRefused, match=r"127\.0\.0\.1"):
        check_target("http://127.0.0.1:9/hook", AllowList.parse(""))
    with pytest.raises(TargetRefused, match="localhost resolves to"):
        check_target("http://localhost/hook", AllowList.parse(""))
    check_target("http://127.0.0.1:9/hook", AllowList.parse("127.0.0.1/32"))
    check_target("http://[::1]:9/hook", AllowList.parse("::1/128"))


def test_backoff_doubles_to_its_cap_and_lands_in_the_covering_tier() -> None:
    assert [backoff_s(n, 1, 300) for n in range(1, 11)] == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300]
    assert [tier_for(backoff_s(n, 1, 300), RETRY_TIERS_S) for n in range(1, 11)] == [1, 5, 5, 30, 30, 120, 120, 300, 300, 300]
    assert tier_for(10_000, RETRY_TIERS_S) == RETRY_TIERS_S[-1]


def delivery(attempt: int = 1) -> WebhookDelivery:
    return WebhookDelivery(webhook_id="msg_x", endpoint_id="we_0123456789abcdef", user_id="alice",
                           event_type="pack.terminal", pack_id=uuid.uuid4(), body="{}", attempt=attempt)


def test_a_delivered_attempt_is_recorded_and_goes_nowhere() -> None:
    [record] = after_attempt(delivery(), Outcome(status_code=204), RetryPolicy(3, 1, 300), T, [])
    assert record.topic == T.webhooks_attempts
    attempted = decode(record.value, (WebhookAttempted,))
    assert (attempted.ok, attempted.status_code, attempted.next, attempted.error) == (True, 204, "done", None)


def test_failed_attempts_back_off_through_the_tiers_then_dead_letter() -> None:
    policy, now = RetryPolicy(3, 1, 300), 1_000.0
    first = after_attempt(delivery(1), Outcome(status_code=500), policy, T, [], now=now)
    assert [m.topic for m in first] == [T.webhooks_attempts, T.webhook_retry(1)]
    retried = decode(first[1].value, (WebhookDelivery,))
    assert retried.attempt == 2 and retried.webhook_id == "msg_x"  # the same webhook-id on every attempt
    assert header(first[1].headers, "x-due-at") == str(int((now + 1) * 1000))
    assert header(first[1].headers, "x-backoff-ms") == "1000"
    second = after_attempt(retried, Outcome(error="ConnectError: refused"), policy, T, first[1].headers, now=now)
    assert second[1].topic == T.webhook_retry(5) and header(second[1].headers, "x-backoff-ms") == "2000"
    assert header(second[1].headers, "x-first-failed-at") == header(first[1].headers, "x-first-failed-at")
    last = after_attempt(decode(second[1].value, (WebhookDelivery,)), Outcome(status_code=503), policy, T, [], now=now)
    assert [m.topic for m in last] == [T.webhooks_attempts, T.webhooks_dlq]
    assert decode(last[0].value, (WebhookAttempted,)).next == "dead_letter"
    assert header(last[1].headers, "x-error") == "HTTP 503" and header(last[1].headers, "x-attempts") == "3"


def registered(endpoint_id: str, user_id: str, events: list[str]) -> WebhookEndpointRegistered:
    return WebhookEndpointRegistered.model_validate(
        {"endpoint_id": endpoint_id, "user_id": user_id, "url": "https://x.example/", "events": events, "secret_ref": "r"},
    )


def test_the_endpoint_index_keeps_owners_apart_and_deletions_for_good() -> None:
    index = EndpointIndex()
    index.apply(registered("we_000000000000000a", "alice", ["pack.terminal"]))
    index.apply(registered("we_000000000000000b", "bob", ["image.status", "pack.terminal"]))
    assert index.owned("alice", "we_000000000000000b") is None
    assert [e.endpoint_id for e in index.subscribed("bob", "image.status")] == ["we_000000000000000b"]
    index.apply(WebhookEndpointDeleted(endpoint_id="we_000000000000000a", user_id="alice"))
    index.apply(registered("we_000000000000000a", "alice", ["pack.terminal"]))  # read again after a restart
    assert index.of_user("alice") == []


def test_a_status_event_makes_one_delivery_per_subscribed_endpoint_the_same_each_time() -> None:
    index = EndpointIndex()
    index.apply(registered("we_000000000000000a", "alice", ["pack.terminal"]))
    index.apply(registered("we_000000000000000c", "alice", ["image.status"]))
    index.apply(registered("we_000000000000000b", "bob", ["pack.terminal"]))
    pack_id = uuid.uuid4()
    image = ImageEntry(image_id="main", kind="main", status=ImageState.COMPLETED, attempts=1, url="u")
    done = PackStatus(pack_id=pack_id, user_id="alice", status=PackState.COMPLETED, cost=1, charged=1, images=[image])
    assert event_type(PackStatus(pack_id=pack_id, user_id="alice", status=PackState.PROCESSING)) is None
    assert event_type(ImageStatus(pack_id=pack_id, user_id="alice", image=image)) == "image.status"
    data = pack_data(done, {"pack_id": str(pack_id), "user_id": "alice", "created_at": "c", "images": [], "seq": 7})
    made = deliveries(done, "pack.terminal", data, index)
    assert [d.endpoint_id for d in made] == ["we_000000000000000a"]
    assert [d.webhook_id for d in deliveries(done, "pack.terminal", data, index)] == [made[0].webhook_id]
    body = json.loads(made[0].body)
    assert body["type"] == "pack.terminal" and body["data"]["status"] == "COMPLETED" and body["data"]["seq"] == 7
    assert body["data"]["images"] == [image.model_dump(mode="json")]
    assert body["data"]["updated_at"] == done.occurred_at.isoformat()


def test_events_from_before_an_endpoint_existed_are_not_delivered_to_it() -> None:
    index = EndpointIndex()
    index.apply(registered("we_000000000000000a", "alice", ["pack.terminal"]))
    created = index.endpoints["we_000000000000000a"].created_at
    for minutes, expected in ((-5, 0), (-0.5, 1), (1, 1)):  # within a minute: clocks of two hosts
        ev = PackStatus(pack_id=uuid.uuid4(), user_id="alice", status=PackState.FAILED,
                        occurred_at=created + timedelta(minutes=minutes))
        assert len(deliveries(ev, "pack.terminal", pack_data(ev, None), index)) == expected


def test_without_the_notifiers_snapshot_the_event_alone_describes_the_pack() -> None:
    at = datetime(2026, 1, 2, tzinfo=UTC)
    ev = PackStatus(pack_id=uuid.uuid4(), user_id="a", status=PackState.REJECTED, reason="no credits", occurred_at=at)
    data = pack_data(ev, None)
    assert data["status"] == "REJECTED" and data["reason"] == "no credits" and data["created_at"] == at.isoformat()
