"""What the api and the notifier answer, as plain frozen dataclasses. Fields the server adds
later are ignored, so an older client keeps working against a newer server."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

TERMINAL = frozenset({"COMPLETED", "PARTIAL", "FAILED", "REJECTED", "CANCELLED"})
LISTING_KINDS: tuple[str, ...] = ("main", "lifestyle", "infographic", "detail", "scale", "packaging")
APLUS_KINDS: tuple[str, ...] = ("aplus_banner", "aplus_features", "aplus_comparison", "aplus_story")


@dataclass(frozen=True)
class Product:
    name: str
    description: str = ""
    features: Sequence[str] = ()
    style: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "features": list(self.features), "style": self.style}


@dataclass(frozen=True)
class Submitted:
    """The api's 202 to `POST /v1/packs`."""

    pack_id: str
    status: str
    cost: int
    status_url: str
    stream_url: str
    stream_token: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Submitted:
        return cls(str(data["pack_id"]), str(data["status"]), int(data["cost"]), str(data["status_url"]),
                   str(data["stream_url"]), str(data["stream_token"]))


@dataclass(frozen=True)
class Change:
    """The api's 202 to a cancel or a regeneration: the status the pack goes to, and the
    regeneration's run (its images' `run`)."""

    pack_id: str
    status: str
    status_url: str
    stream_url: str
    run: int | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Change:
        run = data.get("run")
        return cls(str(data["pack_id"]), str(data["status"]), str(data["status_url"]), str(data["stream_url"]),
                   None if run is None else int(run))


@dataclass(frozen=True)
class Image:
    image_id: str
    kind: str
    status: str
    attempts: int = 0
    url: str | None = None
    error: str | None = None
    next_attempt_at: str | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Image:
        return cls(str(data["image_id"]), str(data["kind"]), str(data["status"]), int(data.get("attempts") or 0),
                   data.get("url"), data.get("error"), data.get("next_attempt_at"))


@dataclass(frozen=True)
class Pack:
    """A pack's snapshot (`GET /v1/packs/{id}`, and `event: pack` on its stream)."""

    pack_id: str
    user_id: str
    status: str
    cost: int
    charged: int
    refunded: int
    seq: int
    reason: str | None = None
    created_at: str | None = None
    updated_at: str | None = None
    images: tuple[Image, ...] = field(default_factory=tuple)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Pack:
        return cls(
            str(data["pack_id"]), str(data["user_id"]), str(data["status"]), int(data.get("cost") or 0),
            int(data.get("charged") or 0), int(data.get("refunded") or 0), int(data.get("seq") or 0), data.get("reason"),
            data.get("created_at"), data.get("updated_at"), tuple(Image.from_json(i) for i in data.get("images") or ()),
        )


@dataclass(frozen=True)
class PackEvent:
    """`event: pack`: the whole snapshot (the first event of a stream, and every pack status change)."""

    id: str
    pack: Pack


@dataclass(frozen=True)
class ImageEvent:
    """`event: image`: one image's entry changed."""

    id: str
    pack_id: str
    image: Image


@dataclass(frozen=True)
class ResyncEvent:
    """The id given to resume from could not be resumed: the snapshot before it is the state now."""

    id: str | None
    pack_id: str | None
    reason: str


@dataclass(frozen=True)
class RevokedEvent:
    """The key that opened the stream (or minted its token) was revoked; the stream ends."""

    reason: str


@dataclass(frozen=True)
class OtherEvent:
    """An event type this client does not know yet (the server may add some)."""

    event: str
    id: str | None
    data: str


StreamEvent = PackEvent | ImageEvent | ResyncEvent | RevokedEvent | OtherEvent


class PacklineError(Exception):
    """A non-2xx answer: its status, the server's `detail`, and `Retry-After` (seconds) if given."""

    def __init__(self, status_code: int, detail: Any, retry_after: float | None = None) -> None:
        super().__init__(f"{status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail
        self.retry_after = retry_after
