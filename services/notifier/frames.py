"""Server-Sent Events on the wire. An event's `event:` and `data:` lines are encoded once,
when the store renders it (`body`); each stream only puts its own `id:` line in front
(the pack's sequence number, or the stream's cursor), so a thousand subscribers of a
pack share one encoding and still each get their stream's id."""

from __future__ import annotations

import re
from dataclasses import dataclass

_LINES = re.compile(r"\r\n|\r|\n")
PING = b": ping\r\n\r\n"


def body(event: str, data: str) -> bytes:
    """`event:` and `data:` lines and the blank line that ends the event (a line break in
    the data, which JSON never has, becomes another `data:` line, as the format wants)."""
    lines = _LINES.split(data) if "\n" in data or "\r" in data else (data,)
    return ("event: " + _LINES.sub("", event) + "\r\n" + "".join(f"data: {line}\r\n" for line in lines) + "\r\n").encode()


def data_of(encoded: bytes) -> str:
    """The data of an encoded event (for readers and tests; streams never decode)."""
    lines = encoded.decode().split("\r\n")
    return "\n".join(line[6:] for line in lines if line.startswith("data: "))


@dataclass(slots=True)
class Frame:
    """One event of one stream, ready to write."""

    id: str | None  # None: no `id:` line, so the client keeps the id it has
    event: str
    encoded: bytes

    @classmethod
    def of(cls, event: str, data: str, id: str | None) -> Frame:
        return cls.with_id(id, event, body(event, data))

    @classmethod
    def with_id(cls, id: str | None, event: str, body: bytes) -> Frame:
        if id is None:
            return cls(id, event, body)
        # Ids are the notifier's own (digits, or a cursor): no line break to take out.
        return cls(id, event, b"id: " + id.encode() + b"\r\n" + body)

    @property
    def data(self) -> str:
        return data_of(self.encoded)
