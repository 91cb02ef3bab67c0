"""A local server that speaks the OpenAI images API over a real socket, scriptable per test:
planned responses are served in order, then every request succeeds."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from services.generation.backends import render_png
from shared.devbroker import free_port

PNG = render_png("fake images api", 64, 64, "fake")
HOLD_AT_MOST_S = 120.0  # a held call answers by itself then: a test that forgot to release still ends


@dataclass
class FakeImagesApi:
    # ("status", code, headers, body) | ("hang", s) | ("hold",): until `release()`, at most HOLD_AT_MOST_S
    plan: list[tuple[Any, ...]] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    port: int = 0
    released: threading.Event = field(default_factory=threading.Event)

    def release(self) -> None:
        """Let every held call (and every one held later) answer."""
        self.released.set()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def generate(self, request: Request) -> JSONResponse:
        body = await request.json()
        self.requests.append({"body": body, "auth": request.headers.get("authorization"), "at": time.monotonic()})
        if not request.headers.get("authorization", "").startswith("Bearer "):
            return JSONResponse({"error": {"message": "missing key", "type": "invalid_request_error"}}, 401)
        if not all(body.get(k) for k in ("model", "prompt", "size")):
            return JSONResponse({"error": {"message": "model, prompt and size are required"}}, 400)
        step = self.plan.pop(0) if self.plan else ("ok",)
        if step[0] == "hang":
            await asyncio.sleep(step[1])
        elif step[0] == "hold":
            deadline = time.monotonic() + HOLD_AT_MOST_S
            # Polled: the release comes from the test's thread, which an asyncio.Event of this loop cannot take.
            while not self.released.is_set() and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        elif step[0] == "status":
            code, headers, error = step[1], (step[2] if len(step) > 2 else {}), (step[3] if len(step) > 3 else None)
            return JSONResponse({"error": error or {"message": f"planned {code}", "type": "server_error"}}, code, headers=headers)
        return JSONResponse({"created": int(time.time()), "data": [{"b64_json": base64.b64encode(PNG).decode()}]})

    @classmethod
    @contextlib.contextmanager
    def running(cls) -> Iterator[FakeImagesApi]:
        api = cls(port=free_port())
        app = Starlette(routes=[Route("/v1/images/generations", api.generate, methods=["POST"])])
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=api.port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        try:
            yield api
        finally:
            server.should_exit = True
            thread.join(10)


CONTENT_POLICY = {"message": "Your request was rejected by the safety system.", "type": "invalid_request_error",
                  "code": "content_policy_violation"}
