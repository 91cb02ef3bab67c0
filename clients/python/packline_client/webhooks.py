"""Verifying webhook requests signed the Standard Webhooks way
(https://www.standardwebhooks.com): an HMAC-SHA256 over "{webhook-id}.{webhook-timestamp}.{body}"."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping

TOLERANCE_S = 5 * 60  # a request older or newer than this is refused: a replayed capture stays useless


class WebhookVerificationError(Exception):
    """The request is not a genuine, fresh webhook of the endpoint whose secret was given."""


def verify_webhook(
    secret: str, headers: Mapping[str, str], body: bytes | str, *, tolerance_s: float = TOLERANCE_S, now: float | None = None,
) -> None:
    """Return if `body` was signed with `secret` (`whsec_<base64 key>`) less than
    `tolerance_s` ago; raise WebhookVerificationError otherwise. `body` must be the raw
    request body, exactly as received (not parsed and serialized again)."""
    lower = {k.lower(): v for k, v in headers.items()}
    msg_id, timestamp, signatures = lower.get("webhook-id"), lower.get("webhook-timestamp"), lower.get("webhook-signature")
    if not msg_id or not timestamp or not signatures:
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature header")
    try:
        sent_at = int(timestamp)
    except ValueError:
        raise WebhookVerificationError(f"webhook-timestamp is not a number: {timestamp[:40]!r}") from None
    if abs((time.time() if now is None else now) - sent_at) > tolerance_s:
        raise WebhookVerificationError("webhook-timestamp is outside the tolerance (a stale or replayed request)")
    try:
        key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except binascii.Error:
        raise WebhookVerificationError("the secret is not whsec_ followed by base64") from None
    raw = body.encode() if isinstance(body, str) else body
    expected = hmac.new(key, f"{msg_id}.{sent_at}.".encode() + raw, hashlib.sha256).digest()
    for entry in signatures.split(" "):
        version, _, signature = entry.partition(",")
        if version != "v1":
            continue  # other schemes (v1a: asymmetric) may sit beside v1
        try:
            given = base64.b64decode(signature, validate=True)
        except binascii.Error:
            continue
        if hmac.compare_digest(given, expected):
            return
    raise WebhookVerificationError("no webhook-signature matches")
