"""Webhooks, the parts the api and the deliverer share: endpoint secrets, Standard Webhooks
signatures (and `verify`, a receiver's check), which target addresses are allowed, and the
retry schedule. No I/O except name resolution in `resolve`.

Signatures follow the Standard Webhooks specification: `webhook-signature` is
`v1,<base64 HMAC-SHA256 of "{webhook-id}.{webhook-timestamp}.{body}">`, keyed with the
base64-decoded part of the endpoint's secret after `whsec_`; several signatures may be
given, separated by spaces, and one that matches is enough.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

SECRET_PREFIX = "whsec_"
TOLERANCE_S = 5 * 60  # a delivery older or newer than this is refused by `verify`
EVENT_TYPES = ("pack.terminal", "image.status")
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


# --- secrets: derived, never stored or sent ---------------------------------------------
def endpoint_secret(server_secret: str, endpoint_id: str) -> str:
    """The endpoint's signing secret, re-made from the server's secret by whoever holds it
    (the api shows it once; the deliverer signs with it): it is on no topic."""
    key = hmac.new(server_secret.encode(), f"webhook:{endpoint_id}".encode(), hashlib.sha256).digest()
    return SECRET_PREFIX + base64.b64encode(key).decode()


def secret_ref(server_secret: str) -> str:
    """A public fingerprint of a server secret: an endpoint records the one its secret came
    from, so rotating PACKLINE_SECRETS leaves existing endpoints' secrets unchanged while
    the old server secret stays listed."""
    return hmac.new(server_secret.encode(), b"webhook-secret-ref", hashlib.sha256).hexdigest()[:16]


def server_secret_for(ref: str, secrets: Sequence[str]) -> str | None:
    """The server secret of `secrets` whose fingerprint is `ref`; None once it is retired."""
    return next((s for s in secrets if secret_ref(s) == ref), None)


# --- signatures ---------------------------------------------------------------------------
def _key(secret: str) -> bytes:
    raw = secret[len(SECRET_PREFIX):] if secret.startswith(SECRET_PREFIX) else secret
    return base64.b64decode(raw, validate=True)


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value for one delivery attempt."""
    mac = hmac.new(_key(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def signed_headers(secret: str, msg_id: str, body: bytes, now: float | None = None) -> dict[str, str]:
    timestamp = int(now if now is not None else time.time())
    return {
        "webhook-id": msg_id, "webhook-timestamp": str(timestamp), "webhook-signature": sign(secret, msg_id, timestamp, body),
        "content-type": "application/json",
    }


def verify(secret: str, headers: Mapping[str, str], body: bytes, now: float | None = None) -> bool:
    """A receiver's check of a delivery: the signature matches one of `webhook-signature`'s
    `v1` entries and the timestamp is within five minutes. Self-contained (standard
    library only), so a client package can copy it as it is. Header names: any case."""
    lowered = {k.lower(): v for k, v in headers.items()}
    msg_id, stamp, signatures = (lowered.get(n) for n in ("webhook-id", "webhook-timestamp", "webhook-signature"))
    if not msg_id or not stamp or not signatures:
        return False
    try:
        timestamp = int(stamp)
        key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except (ValueError, binascii.Error):
        return False
    if abs((now if now is not None else time.time()) - timestamp) > 5 * 60:  # TOLERANCE_S, kept literal: copyable
        return False
    expected = base64.b64encode(hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()).decode()
    for entry in signatures.split(" "):
        version, _, sig = entry.partition(",")
        if version == "v1" and hmac.compare_digest(sig.encode(), expected.encode()):
            return True
    return False


def body_of(event_type: str, data: Any) -> bytes:
    """The bytes of a delivery: made once, sent alike on every attempt."""
    return json.dumps({"type": event_type, "data": data}, separators=(",", ":"), default=str).encode()


# --- which targets are allowed ------------------------------------------------------------
class TargetRefused(ValueError):
    """The URL may not be a webhook target; the message says why."""


@dataclass(frozen=True)
class AllowList:
    """`WEBHOOK_ALLOWED_HOSTS`: host names and CIDRs that may be targets although they
    are private, loopback or link-local (a receiver inside the deployment, tests)."""

    hosts: frozenset[str]
    networks: tuple[IpNetwork, ...]

    @classmethod
    def parse(cls, text: str) -> AllowList:
        hosts: set[str] = set()
        networks: list[IpNetwork] = []
        for item in (i.strip() for i in text.split(",")):
            if not item:
                continue
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                hosts.add(item.lower().rstrip("."))
        return cls(frozenset(hosts), tuple(networks))

    def covers(self, address: IpAddress) -> bool:
        return any(address in net for net in self.networks)


def parse_target(url: str) -> tuple[str, str]:
    """(scheme, host) of a webhook URL, or TargetRefused."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise TargetRefused("the webhook URL must be http:// or https://")
    if not parts.hostname:
        raise TargetRefused("the webhook URL has no host")
    if parts.username or parts.password:
        raise TargetRefused("the webhook URL must not carry credentials")
    try:
        _ = parts.port
    except ValueError as exc:
        raise TargetRefused("the webhook URL has an invalid port") from exc
    return parts.scheme, parts.hostname.lower().rstrip(".")


def internal(address: IpAddress) -> bool:
    """Addresses a receiver on the internet never has: private, loopback, link-local and the like."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return internal(address.ipv4_mapped)
    return not address.is_global or address.is_multicast


def check_addresses(host: str, addresses: Iterable[str], allowed: AllowList) -> None:
    """TargetRefused unless every address `host` resolves to is public or allowed."""
    if host in allowed.hosts:
        return
    resolved = [ipaddress.ip_address(a.split("%", 1)[0]) for a in addresses]
    if not resolved:
        raise TargetRefused(f"the webhook host {host} does not resolve")
    for address in resolved:
        if internal(address) and not allowed.covers(address):
            raise TargetRefused(
                f"the webhook host {host} resolves to {address}, a private, loopback or link-local address "
                "(not in WEBHOOK_ALLOWED_HOSTS)",
            )


def resolve(host: str) -> list[str]:
    """Every address of `host` (blocking: run it in a thread)."""
    try:
        return sorted({str(info[4][0]) for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)})
    except (socket.gaierror, UnicodeError) as exc:
        raise TargetRefused(f"the webhook host {host} does not resolve: {exc}") from exc


def check_target(url: str, allowed: AllowList) -> None:
    """The whole check of a target URL, name resolution included (blocking)."""
    _, host = parse_target(url)
    if host in allowed.hosts:
        return
    try:
        addresses = [str(ipaddress.ip_address(host))]
    except ValueError:
        addresses = resolve(host)
    check_addresses(host, addresses, allowed)


# --- the retry schedule -------------------------------------------------------------------
def backoff_s(attempt: int, base_s: float, max_s: float) -> float:
    """How long to wait after failed attempt number `attempt` (1, 2, ...): doubling from
    `base_s`, at most `max_s`. No jitter: the tiers already batch the waits."""
    return min(max_s, base_s * 2 ** (attempt - 1))


def tier_for(delay_s: float, tiers: Sequence[int]) -> int:
    """The smallest retry tier that covers the delay (the last tier takes anything longer)."""
    for tier in tiers:
        if delay_s <= tier:
            return tier
    return tiers[-1]
