"""Stateless credentials: API keys and pack-scoped stream tokens are HMAC-signed, so the
api and the notifier verify them with the shared secret and no shared database."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

API_KEY_PREFIX = "pk_"
STREAM_TOKEN_PREFIX = "st_"


class AuthError(Exception):
    pass


def _mac(secret: str, message: str) -> str:
    digest = hmac.new(secret.encode(), message.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:24]).decode().rstrip("=")


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _unb64(text: str) -> str:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()


def make_api_key(secret: str, user_id: str, generation: int = 0) -> str:
    """`generation` lets a revoked key be replaced by a new one for the same user."""
    payload = _b64(f"{user_id}:{generation}")
    return f"{API_KEY_PREFIX}{payload}.{_mac(secret, 'key:' + payload)}"


def verify_api_key(secret: str, key: str) -> tuple[str, int]:
    """Returns (user_id, generation) or raises AuthError."""
    if not key.startswith(API_KEY_PREFIX) or "." not in key:
        raise AuthError("malformed API key")
    payload, mac = key[len(API_KEY_PREFIX):].rsplit(".", 1)
    if not hmac.compare_digest(mac, _mac(secret, "key:" + payload)):
        raise AuthError("invalid API key")
    try:
        user_id, generation = _unb64(payload).rsplit(":", 1)
        return user_id, int(generation)
    except (ValueError, UnicodeDecodeError) as exc:
        raise AuthError("malformed API key") from exc


def make_stream_token(secret: str, user_id: str, pack_id: str, ttl_s: int, now: float | None = None) -> str:
    expires = int((now if now is not None else time.time()) + ttl_s)
    payload = _b64(f"{user_id}:{pack_id}:{expires}")
    return f"{STREAM_TOKEN_PREFIX}{payload}.{_mac(secret, 'stream:' + payload)}"


def verify_stream_token(secret: str, token: str, pack_id: str, now: float | None = None) -> str:
    """Returns the user id the token was issued to, for this pack only."""
    if not token.startswith(STREAM_TOKEN_PREFIX) or "." not in token:
        raise AuthError("malformed stream token")
    payload, mac = token[len(STREAM_TOKEN_PREFIX):].rsplit(".", 1)
    if not hmac.compare_digest(mac, _mac(secret, "stream:" + payload)):
        raise AuthError("invalid stream token")
    try:
        user_id, token_pack, expires = _unb64(payload).rsplit(":", 2)
        expires_at = int(expires)
    except (ValueError, UnicodeDecodeError) as exc:
        raise AuthError("malformed stream token") from exc
    if token_pack != pack_id:
        raise AuthError("stream token is for another pack")
    if expires_at < (now if now is not None else time.time()):
        raise AuthError("stream token expired")
    return user_id
