"""The HTTP side: submit packs to the api, follow them on the notifier, cancel and regenerate."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from types import TracebackType
from typing import Any

import httpx

from packline_client import sse
from packline_client.types import Change, Pack, PackEvent, PacklineError, Product, RevokedEvent, StreamEvent, Submitted


class Packline:
    """An async client of one packline deployment.

    `api_url` is the api's base URL; `notifier_url` the notifier's (default: the same
    origin, as behind the deployment's proxy). `api_key` is a `pk_…` key; a pack can also
    be followed with only the stream token its `submit` returned.

        async with Packline("http://127.0.0.1:8000", api_key, notifier_url="http://127.0.0.1:8001") as packline:
            pack = await packline.submit(Product("Steel bottle"), idempotency_key="order-1")
            async for event in packline.follow(pack):
                print(event)
    """

    def __init__(
        self, api_url: str, api_key: str | None = None, *, notifier_url: str | None = None, timeout: float = 30.0,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.notifier_url = (notifier_url or api_url).rstrip("/")
        self.api_key = api_key
        self._own_http = http is None
        self.http = http or httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=5.0))

    async def __aenter__(self) -> Packline:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._own_http:
            await self.http.aclose()

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    async def submit(
        self, product: Product | Mapping[str, Any], images: Sequence[str] | None = None, aplus: bool | Sequence[str] = False,
        idempotency_key: str | None = None,
    ) -> Submitted:
        """`POST /v1/packs`. `images`: listing kinds (None: all six); `aplus`: True for the four
        A+ modules, or the ones wanted. With `idempotency_key`, a retry of the same call gets
        the same pack and is charged once (the same key with another body: PacklineError 409)."""
        body = {
            "product": product.to_json() if isinstance(product, Product) else dict(product),
            "images": list(images) if images is not None else None,
            "aplus": aplus if isinstance(aplus, bool) else list(aplus),
        }
        headers = {**self._auth(), **({"Idempotency-Key": idempotency_key} if idempotency_key else {})}
        response = await self.http.post(f"{self.api_url}/v1/packs", json=body, headers=headers)
        return Submitted.from_json(_ok(response))

    async def cancel(self, pack: str | Submitted) -> Change:
        """`POST /v1/packs/{id}/cancel` (202, the pack goes to CANCELLED): images not made yet
        are never made, and every image not delivered is refunded. A finished pack: PacklineError 409."""
        response = await self.http.post(f"{self.api_url}/v1/packs/{_id(pack)}/cancel", headers=self._auth())
        return Change.from_json(_ok(response))

    async def regenerate(self, pack: str | Submitted, images: Sequence[str] | None = None) -> Change:
        """`POST /v1/packs/{id}/regenerate` (202): make a PARTIAL or FAILED pack's failed images
        again, as a new run (`images`: only these of them; None: every failed one)."""
        body = {"images": list(images)} if images is not None else None
        response = await self.http.post(f"{self.api_url}/v1/packs/{_id(pack)}/regenerate", json=body, headers=self._auth())
        return Change.from_json(_ok(response))

    async def snapshot(self, pack: str | Submitted, token: str | None = None) -> Pack:
        """`GET /v1/packs/{id}` on the notifier."""
        url, params, headers = self._pack_url(pack, token, "")
        return Pack.from_json(_ok(await self.http.get(url, params=params, headers=headers)))

    async def follow(
        self, pack: str | Submitted, last_event_id: str | None = None, token: str | None = None, reconnects: int = 20,
        idle_timeout: float = 60.0,
    ) -> AsyncIterator[StreamEvent]:
        """The pack's events (`GET /v1/packs/{id}/events`) until it is terminal (or the key is
        revoked). A dropped connection is resumed after the last id seen (`Last-Event-ID`), so
        nothing is missed and nothing comes twice; `last_event_id` resumes an earlier follow
        ("0": every event from the start). `reconnects`: failed attempts in a row before the error is
        raised. A connection silent for `idle_timeout` s is taken as dead (the server pings idle streams)."""
        url, params, headers = self._pack_url(pack, token, "/events")
        timeout = httpx.Timeout(idle_timeout, connect=5.0)
        failures = 0
        while True:
            sent = dict(headers, Accept="text/event-stream")
            if last_event_id is not None:
                sent["Last-Event-ID"] = last_event_id
            try:
                async with self.http.stream("GET", url, params=params, headers=sent, timeout=timeout) as response:
                    if response.status_code != 200:
                        await response.aread()
                        _ok(response)
                    async for raw in sse.parse(response.aiter_lines()):
                        failures = 0
                        if raw.id is not None:
                            last_event_id = raw.id
                        event = sse.typed(raw)
                        yield event
                        if isinstance(event, RevokedEvent) or (isinstance(event, PackEvent) and event.pack.terminal):
                            return
                # The server ended the stream without a terminal event after our id: it ends a
                # stream only at the end, so one resumed at (or past) the last event is done.
                if (await self.snapshot(pack, token)).terminal:
                    return
            except (httpx.TransportError, PacklineError) as exc:
                if isinstance(exc, PacklineError) and exc.status_code not in (502, 503, 504):
                    raise
                failures += 1
                if failures > reconnects:
                    raise
                retry_after = exc.retry_after if isinstance(exc, PacklineError) else None
                await asyncio.sleep(retry_after or min(0.5 * failures, 5.0))

    def _pack_url(self, pack: str | Submitted, token: str | None, suffix: str) -> tuple[str, dict[str, str], dict[str, str]]:
        if isinstance(pack, Submitted):
            url = pack.stream_url if suffix else pack.status_url
            token = token or (None if self.api_key else pack.stream_token)
        else:
            url = f"{self.notifier_url}/v1/packs/{pack}{suffix}"
        return url, ({"token": token} if token else {}), ({} if token else self._auth())


def _id(pack: str | Submitted) -> str:
    return pack.pack_id if isinstance(pack, Submitted) else pack


def _ok(response: httpx.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        data = response.text
    if response.is_success:
        return data if isinstance(data, dict) else {"body": data}
    retry_after = response.headers.get("Retry-After")
    detail = data.get("detail", data) if isinstance(data, dict) else data
    raise PacklineError(response.status_code, detail, float(retry_after) if retry_after and retry_after.isdigit() else None)
