"""Stateless credentials: API keys and pack-scoped stream tokens are HMAC-signed, so the
api and the notifier verify them with the shared secrets and no shared database.

Two key formats, both `pk_<payload>.<mac>`:

- an **account key** (what `packline accounts create` prints, the format since the
  start): the payload is `user:generation`; it holds every user scope;
- a **named key** (`POST /v1/keys`, `packline accounts keys create`): the payload is
  `v2 <user> <generation> <key id> <scope,scope...>`, signed under another label, so
  neither format can pass for the other.

Rotation: a `Keyring` holds every secret in force; the first signs, each one verifies,
and the claims say which one did (`secret_index`), so a key still signed by an old
secret can be reported before that secret is dropped.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import secrets as _random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

API_KEY_PREFIX = "pk_"
STREAM_TOKEN_PREFIX = "st_"

Scope = Literal["packs:write", "packs:read", "keys", "ops", "webhooks"]
SCOPES: tuple[Scope, ...] = get_args(Scope)
# What an account key (today's format) holds: everything a user can do. `ops` is for
# operators: only a holder of the secret (the CLI) or of an `ops` key can grant it.
USER_SCOPES: frozenset[Scope] = frozenset({"packs:write", "packs:read", "keys", "webhooks"})
KEY_ID_PATTERN = r"^key_[0-9a-f]{16}$"

_V2 = "v2 "
_NO_KEY = "-"  # a stream token minted by an account key (which has no key id)


class AuthError(Exception):
    pass


@dataclass(frozen=True)
class KeyClaims:
    """What a verified API key says. `key_id` is None for an account key."""

    user_id: str
    generation: int
    key_id: str | None
    scopes: frozenset[str]
    secret_index: int = 0  # which secret of the keyring verified it; 0 is the signing one

    def has(self, scope: str) -> bool:
        return scope in self.scopes


@dataclass(frozen=True)
class StreamClaims:
    """What a verified stream token says: the key that minted it dies, the token dies."""

    user_id: str
    pack_id: str
    generation: int
    key_id: str | None
    secret_index: int = 0


def parse_secrets(secrets_list: str, secret: str = "") -> tuple[str, ...]:
    """`PACKLINE_SECRETS` (comma-separated, the first signs) when it names any secret,
    else `PACKLINE_SECRET` alone; empty when neither is set. Blanks and repeats dropped."""
    listed = [s.strip() for s in secrets_list.split(",")]
    found = tuple(dict.fromkeys(s for s in listed if s))
    if found:
        return found
    return (secret.strip(),) if secret.strip() else ()


def new_key_id() -> str:
    return f"key_{_random.token_hex(8)}"


def missing_scopes(have: Iterable[str], need: Iterable[str]) -> list[str]:
    """The scopes of `need` that `have` lacks, in the contract's order."""
    held, wanted = set(have), set(need)
    return [s for s in SCOPES if s in wanted and s not in held]


def _mac(secret: str, message: str) -> str:
    digest = hmac.new(secret.encode(), message.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:24]).decode().rstrip("=")


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _unb64(text: str) -> str:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()


def _split(token: str, prefix: str, what: str) -> tuple[str, str, str]:
    """(payload as sent, payload decoded, mac), or AuthError."""
    if not token.startswith(prefix) or "." not in token:
        raise AuthError(f"malformed {what}")
    payload, mac = token[len(prefix):].rsplit(".", 1)
    try:
        return payload, _unb64(payload), mac
    except (ValueError, UnicodeDecodeError) as exc:
        raise AuthError(f"malformed {what}") from exc


def _signed_by(secrets: Sequence[str], label: str, payload: str, mac: str) -> int | None:
    """The index of the secret that made `mac`, or None."""
    for i, secret in enumerate(secrets):
        if hmac.compare_digest(mac, _mac(secret, label + payload)):
            return i
    return None


def _ring(secrets: Sequence[str] | str) -> Sequence[str]:
    ring = (secrets,) if isinstance(secrets, str) else secrets
    if not ring:
        raise AuthError("no secret configured")
    return ring


def make_api_key(secret: str, user_id: str, generation: int = 0) -> str:
    """An account key. `generation` lets a revoked key be replaced by a new one for the same user."""
    payload = _b64(f"{user_id}:{generation}")
    return f"{API_KEY_PREFIX}{payload}.{_mac(secret, 'key:' + payload)}"


def make_named_key(secret: str, user_id: str, key_id: str, scopes: Iterable[str], generation: int = 0) -> str:
    """A named key with its own id and scopes (`generation`: the user's at creation, so
    `revoke-key` ends it too)."""
    ordered = [s for s in SCOPES if s in set(scopes)]
    if not ordered:
        raise ValueError("a key needs at least one scope")
    payload = _b64(f"{_V2}{user_id} {generation} {key_id} {','.join(ordered)}")
    return f"{API_KEY_PREFIX}{payload}.{_mac(secret, 'key2:' + payload)}"


def verify_api_key(secrets: Sequence[str] | str, key: str) -> KeyClaims:
    """The key's claims, or AuthError. Any secret of `secrets` may have signed it."""
    payload, text, mac = _split(key, API_KEY_PREFIX, "API key")
    named = text.startswith(_V2)  # a user id has no space, so no account key starts so
    index = _signed_by(_ring(secrets), "key2:" if named else "key:", payload, mac)
    if index is None:
        raise AuthError("invalid API key")
    try:
        if named:
            user_id, generation, key_id, scopes = text[len(_V2):].split(" ")
            return KeyClaims(user_id, int(generation), key_id, frozenset(scopes.split(",")), index)
        user_id, generation = text.rsplit(":", 1)
        return KeyClaims(user_id, int(generation), None, USER_SCOPES, index)
    except ValueError as exc:
        raise AuthError("malformed API key") from exc


def make_stream_token(
    secret: str, user_id: str, pack_id: str, ttl_s: int, now: float | None = None,
    generation: int = 0, key_id: str | None = None,
) -> str:
    """A token for one pack's snapshot and stream, carrying the key that minted it."""
    expires = int((now if now is not None else time.time()) + ttl_s)
    payload = _b64(f"{_V2}{user_id} {pack_id} {expires} {generation} {key_id or _NO_KEY}")
    return f"{STREAM_TOKEN_PREFIX}{payload}.{_mac(secret, 'stream2:' + payload)}"


def verify_stream_token(secrets: Sequence[str] | str, token: str, pack_id: str, now: float | None = None) -> StreamClaims:
    """The token's claims, for this pack only. A token of the first format (no key in it)
    counts as minted by the user's generation-0 account key."""
    payload, text, mac = _split(token, STREAM_TOKEN_PREFIX, "stream token")
    v2 = text.startswith(_V2)
    index = _signed_by(_ring(secrets), "stream2:" if v2 else "stream:", payload, mac)
    if index is None:
        raise AuthError("invalid stream token")
    try:
        if v2:
            user_id, token_pack, expires, generation, key_id = text[len(_V2):].split(" ")
        else:
            (user_id, token_pack, expires), generation, key_id = text.rsplit(":", 2), "0", _NO_KEY
        claims = StreamClaims(user_id, token_pack, int(generation), None if key_id == _NO_KEY else key_id, index)
        expires_at = int(expires)
    except ValueError as exc:
        raise AuthError("malformed stream token") from exc
    if claims.pack_id != pack_id:
        raise AuthError("stream token is for another pack")
    if expires_at < (now if now is not None else time.time()):
        raise AuthError("stream token expired")
    return claims


def make_user_stream_token(
    secret: str, user_id: str, ttl_s: int, now: float | None = None, generation: int = 0, key_id: str | None = None,
) -> tuple[str, int]:
    """A token for all of one user's packs (`GET /v1/events?token=`), carrying the key that
    minted it, and when it expires (epoch seconds). Signed under its own label: neither a
    pack's token nor an API key can pass for it."""
    expires = int((now if now is not None else time.time()) + ttl_s)
    payload = _b64(f"u1 {user_id} {expires} {generation} {key_id or _NO_KEY}")
    return f"{STREAM_TOKEN_PREFIX}{payload}.{_mac(secret, 'ustream:' + payload)}", expires


def verify_user_stream_token(secrets: Sequence[str] | str, token: str, now: float | None = None) -> StreamClaims:
    """The claims of a user stream token (`pack_id` is empty: it names no pack), or AuthError."""
    payload, text, mac = _split(token, STREAM_TOKEN_PREFIX, "stream token")
    index = _signed_by(_ring(secrets), "ustream:", payload, mac)
    if index is None:
        raise AuthError("invalid user stream token")
    try:
        kind, user_id, expires, generation, key_id = text.split(" ")
        if kind != "u1":
            raise ValueError(kind)
        claims = StreamClaims(user_id, "", int(generation), None if key_id == _NO_KEY else key_id, index)
        expires_at = int(expires)
    except ValueError as exc:
        raise AuthError("malformed stream token") from exc
    if expires_at < (now if now is not None else time.time()):
        raise AuthError("stream token expired")
    return claims


@functools.lru_cache(maxsize=10_000)
def _verified(secrets: tuple[str, ...], key: str) -> KeyClaims:
    """`verify_api_key`, remembered for the keys in use (a key's claims never change;
    revocation is checked apart, on every request). Only good keys are kept: an error is
    not cached, so forged keys cannot crowd out real ones."""
    return verify_api_key(secrets, key)


@dataclass(frozen=True)
class Keyring:
    """The secrets in force: the first signs, every one verifies."""

    secrets: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.secrets or not all(self.secrets):
            raise ValueError("a keyring needs at least one non-empty secret")

    @property
    def signing(self) -> str:
        return self.secrets[0]

    def verify_key(self, key: str) -> KeyClaims:
        return _verified(self.secrets, key)

    def verify_stream_token(self, token: str, pack_id: str, now: float | None = None) -> StreamClaims:
        return verify_stream_token(self.secrets, token, pack_id, now)

    def verify_user_stream_token(self, token: str, now: float | None = None) -> StreamClaims:
        return verify_user_stream_token(self.secrets, token, now)
