"""verify_webhook against signatures made here with hmac, per the Standard Webhooks scheme."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from packline_client import WebhookVerificationError, verify_webhook

KEY = b"\x01\x02packline webhook key\xfe\xff"
SECRET = "whsec_" + base64.b64encode(KEY).decode()
NOW = 1_790_000_000
BODY = b'{"type":"pack.completed","data":{"pack_id":"5f0c"}}'


def signed(body: bytes = BODY, msg_id: str = "msg_1", timestamp: int = NOW, key: bytes = KEY) -> dict[str, str]:
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp), "webhook-signature": "v1," + base64.b64encode(mac).decode()}


def test_a_known_vector_verifies() -> None:
    """The example of the Standard Webhooks specification (its secret, id, timestamp, body and signature)."""
    headers = {"webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek", "webhook-timestamp": "1614265330",
               "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="}
    body = '{"test": 2432232314}'
    verify_webhook("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", headers, body, now=1614265330)


def test_a_signature_made_with_hmac_verifies() -> None:
    verify_webhook(SECRET, signed(), BODY, now=NOW + 60)
    verify_webhook(SECRET, {k.title(): v for k, v in signed().items()}, BODY.decode(), now=NOW)  # header case, str body


def test_one_matching_signature_among_several_is_enough() -> None:
    headers = signed()
    headers["webhook-signature"] = "v1,AAAA v1a,xyz " + headers["webhook-signature"] + " v1,not-base64!"
    verify_webhook(SECRET, headers, BODY, now=NOW)


@pytest.mark.parametrize(
    "case",
    ["tampered body", "old timestamp", "future timestamp", "wrong secret", "other id", "timestamp changed", "no signature"],
)
def test_a_forged_or_stale_request_is_refused(case: str) -> None:
    body, headers, secret, now = BODY, signed(), SECRET, NOW
    if case == "tampered body":
        body = BODY.replace(b"5f0c", b"5f0d")
    elif case == "old timestamp":
        headers, now = signed(timestamp=NOW - 301), NOW
    elif case == "future timestamp":
        headers = signed(timestamp=NOW + 301)
    elif case == "wrong secret":
        secret = "whsec_" + base64.b64encode(b"another key").decode()
    elif case == "other id":
        headers["webhook-id"] = "msg_2"
    elif case == "timestamp changed":
        headers["webhook-timestamp"] = str(NOW + 1)
    else:
        del headers["webhook-signature"]
    with pytest.raises(WebhookVerificationError):
        verify_webhook(secret, headers, body, now=now)


def test_the_tolerance_is_five_minutes_either_way() -> None:
    verify_webhook(SECRET, signed(timestamp=NOW - 300), BODY, now=NOW)
    verify_webhook(SECRET, signed(timestamp=NOW + 300), BODY, now=NOW)
    with pytest.raises(WebhookVerificationError, match="tolerance"):
        verify_webhook(SECRET, signed(timestamp=NOW - 301), BODY, now=NOW)


def test_what_packline_sends_verifies() -> None:
    """The deliveries' own signing (shared.webhooks) and the client's check agree."""
    from shared.webhooks import signed_headers

    headers = signed_headers(SECRET, "msg_from_packline", BODY, now=NOW)
    verify_webhook(SECRET, headers, BODY, now=NOW + 10)
    with pytest.raises(WebhookVerificationError):
        verify_webhook(SECRET, headers, BODY + b" ", now=NOW + 10)
