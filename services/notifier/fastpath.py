"""The two event streams served ahead of FastAPI's middleware and routing, for the ordinary
request: a GET with one Bearer API key holding `packs:read`, no `Origin` (so no CORS to
answer), no query but `last_event_id`, once the notifier has caught up, for a pack already
known (or the user's stream). A stream lives as long as its client stays, and through the
routes every one kept the whole ASGI stack alive for that long (a dozen middleware and
routing frames, the request, FastAPI's resolved dependencies), every event it wrote went
through the send wrappers of the middlewares, and every wake-up resumed all their frames.
Here a stream holds only its own objects and writes straight to the server's `send`; it
records the request metric itself, as ObserveHttp would.

Anything else goes to the app unchanged, which answers as it always did (401, 403, 404,
503, stream tokens, CORS): the checks here only decide which way to go and answer
nothing. They have no effect either, but the report of the key's use, which the route's
own check would make as well."""

from __future__ import annotations

import time
from functools import partial
from urllib.parse import parse_qsl

from fastapi import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from services.notifier import streams
from services.notifier.consumer import StatusFeed
from services.notifier.deps import still_valid
from services.notifier.sse import EventStream, Frames, Hub
from shared import tracing
from shared.http import KeyCheck
from shared.metrics import observe_http

PACKS, EVENTS = "/v1/packs/", "/events"


class StreamFastPath:
    def __init__(self, app: ASGIApp, pack_route: object, user_route: object) -> None:
        self.app = app
        self.pack_route, self.user_route = pack_route, user_route  # for the metrics' `route` label (shared/metrics.py)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        frames = self._frames(scope) if scope["type"] == "http" and scope["method"] == "GET" else None
        if frames is None:
            await self.app(scope, receive, send)
            return
        hub = scope["app"].state.hub
        assert isinstance(hub, Hub)
        started = time.perf_counter()
        try:
            await EventStream(frames, hub)(scope, receive, send)
        finally:
            observe_http("notifier", "GET", getattr(scope["route"], "path", "unmatched"), 200, time.perf_counter() - started)

    def _frames(self, scope: Scope) -> Frames | None:
        """The stream's frames, when this request is an ordinary one; else None."""
        path: str = scope["path"]
        if path == "/v1/events":
            pack_id = None
        elif path.startswith(PACKS) and path.endswith(EVENTS) and "/" not in (pack_id := path[len(PACKS):-len(EVENTS)]):
            if not pack_id:
                return None
        else:
            return None
        if tracing.enabled():  # FastAPI's own spans name the route: let it make them
            return None
        auth: list[bytes] = []
        last_id: str | None = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                auth.append(value)
            elif name == b"origin":
                return None
            elif name == b"last-event-id":
                last_id = value.decode("latin-1")
        query = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        if len(auth) != 1 or any(k != "last_event_id" for k, _ in query):
            return None
        last_id = last_id or (query[0][1] if query else None) or None
        state = scope["app"].state
        feed, check = state.feed, state.keys
        assert isinstance(feed, StatusFeed) and isinstance(check, KeyCheck)
        if not feed.ready.is_set():
            return None
        try:
            key = check.bearer(auth[0].decode("latin-1"))
        except HTTPException:
            return None
        if key is None or not key.has("packs:read"):
            return None
        allowed = still_valid(check.revocations, key)
        if pack_id is None:
            scope["route"] = self.user_route
            return partial(streams.user_events, feed.store, key.user_id, last_id, allowed)
        pack = feed.store.get(pack_id)
        if pack is None or pack.user_id != key.user_id:
            return None  # the route waits for a pack not seen yet, and answers 404 for another user's
        scope["route"] = self.pack_route
        return partial(streams.pack_events, pack, last_id, allowed)
