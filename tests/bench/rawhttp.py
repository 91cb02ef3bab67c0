"""A minimal HTTP/1.1 client on asyncio streams, for load generation: keep-alive POSTs and
one SSE stream per user, de-chunked by hand. A load client must never be what limits a
benchmark; a general-purpose client (httpx) spends more CPU per request than the api."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any


class Connection:
    """One keep-alive connection; one request at a time."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        fresh = self.writer is None or self.writer.is_closing()
        try:
            return await self._post(path, body, headers, fresh)
        except (asyncio.IncompleteReadError, ConnectionError):
            if fresh:
                raise
            return await self._post(path, body, headers, True)  # the server closed an idle keep-alive connection

    async def _post(self, path: str, body: bytes, headers: dict[str, str], fresh: bool) -> tuple[int, bytes]:
        if fresh:
            self.close()
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None and self.writer is not None
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.writer.write(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{head}\r\n".encode() + body
        )
        status, fields = await read_head(self.reader)
        length = int(fields.get("content-length", "0"))
        data = await self.reader.readexactly(length) if length else b""
        if fields.get("connection") == "close":
            self.writer.close()
        return status, data

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    status_line = await reader.readuntil(b"\r\n")
    status = int(status_line.split(b" ", 2)[1])
    fields: dict[str, str] = {}
    while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
        name, _, value = line.decode("latin-1").partition(":")
        fields[name.strip().lower()] = value.strip()
    return status, fields


async def sse(port: int, path: str, headers: dict[str, str]) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """(event, data) for each Server-Sent Event of a GET, until the server closes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 22)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n{head}\r\n".encode())
    try:
        status, fields = await read_head(reader)
        if status != 200:
            raise RuntimeError(f"GET {path}: HTTP {status}")
        chunked = fields.get("transfer-encoding") == "chunked"
        pending, event, data = b"", "message", b""
        while True:
            if chunked:
                size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                if size == 0:
                    return
                block = await reader.readexactly(size + 2)
                pending += block[:-2]
            else:
                block = await reader.read(1 << 16)
                if not block:
                    return
                pending += block
            *lines, pending = pending.split(b"\n")
            for line in lines:
                line = line.rstrip(b"\r")
                if line.startswith(b"event:"):
                    event = line[6:].strip().decode()
                elif line.startswith(b"data:"):
                    data += line[5:].strip()
                elif not line and data:
                    yield event, json.loads(data)
                    event, data = "message", b""
    finally:
        writer.close()
