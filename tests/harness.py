"""Test-side helpers around a running stack: accounts, pack requests, SSE, Kafka reads."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from services.cli import kafka_io, sse
from services.cli.stack import SERVICES, Stack
from shared.auth import make_api_key
from shared.devbroker import free_port
from shared.events import AccountCreate, BalanceQuery, CreditsBalance, ImageStatus, decode
from shared.kafka import KafkaConfig, Outgoing
from shared.topics import Topics

FAST_BACKEND = {"LOCAL_IMAGE_LATENCY_MS": "200", "RETRY_BASE_DELAY_S": "0.5", "RETRY_MAX_DELAY_S": "2"}


@dataclass
class RunningStack:
    stack: Stack
    env: dict[str, str]
    bootstrap: str
    topics: Topics
    secret: str
    var_dir: Path

    @classmethod
    @contextlib.contextmanager
    def started(
        cls, bootstrap: str, tmp: Path, services: tuple[str, ...] = SERVICES, **overrides: str,
    ) -> Iterator[RunningStack]:
        """`services` may name several instances of a worker (`generation-1`, `generation-2`)."""
        prefix = f"t{uuid.uuid4().hex[:10]}."
        secret = uuid.uuid4().hex
        ports = {name: str(free_port()) for name in ("API_PORT", "NOTIFIER_PORT", "CREDITS_PORT", "GENERATION_PORT")}
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "TOPIC_PREFIX": prefix, "PACKLINE_SECRET": secret,
            "VAR_DIR": str(tmp), "TOPIC_PARTITIONS": "3", **ports,
            "API_PUBLIC_URL": f"http://127.0.0.1:{ports['API_PORT']}",
            "NOTIFIER_PUBLIC_URL": f"http://127.0.0.1:{ports['NOTIFIER_PORT']}",
            **FAST_BACKEND, **overrides,
        }
        stack = Stack(env, tmp / "logs", services, ports={name: free_port() for name in services if "-" in name})
        stack.start()
        try:
            stack.wait_healthy(90)
            yield cls(stack, env, bootstrap, Topics(prefix), secret, tmp)
        finally:
            stack.stop()

    @property
    def kafka(self) -> KafkaConfig:
        return KafkaConfig(self.bootstrap)

    @property
    def api(self) -> str:
        return self.stack.url("api")

    @property
    def notifier(self) -> str:
        return self.stack.url("notifier")

    def key(self, user_id: str) -> str:
        return make_api_key(self.secret, user_id)

    def auth(self, user_id: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key(user_id)}"}

    async def create_user(self, credits: int) -> str:
        user_id = f"u-{uuid.uuid4().hex[:8]}"
        await self._command(AccountCreate(user_id=user_id, credits=credits), user_id)
        return user_id

    async def balance(self, user_id: str) -> int | None:
        reply = await self._command(BalanceQuery(user_id=user_id), user_id)
        return reply.balance

    async def _command(self, event: Any, user_id: str) -> CreditsBalance:
        reply = await kafka_io.request_reply(
            self.kafka, Outgoing.of(self.topics.credits_commands, event, user_id), self.topics.credits_events,
            CreditsBalance, lambda e: e.command_id == event.event_id, timeout=60,
        )
        return reply

    async def post_pack(self, user_id: str, body: dict[str, Any] | None = None, **headers: str) -> httpx.Response:
        body = body or {"product": {"name": "Steel bottle", "description": "750 ml", "features": ["cold 24 h"]}}
        async with httpx.AsyncClient(timeout=30) as client:
            return await client.post(f"{self.api}/v1/packs", json=body, headers={**self.auth(user_id), **headers})

    async def events(self, pack_id: str, user_id: str, last_event_id: str | None = "0", timeout: float = 90) -> list[sse.SseEvent]:
        """Every SSE event of a pack until its stream ends (from the start, by default)."""
        url = f"{self.notifier}/v1/packs/{pack_id}/events"
        seen: list[sse.SseEvent] = []

        async def collect() -> None:
            async for ev in sse.follow(url, self.auth(user_id), last_event_id=last_event_id, retries=3):
                seen.append(ev)

        await asyncio.wait_for(collect(), timeout)
        return seen

    async def snapshot(self, pack_id: str, user_id: str) -> httpx.Response:
        async with httpx.AsyncClient(timeout=30) as client:
            return await client.get(f"{self.notifier}/v1/packs/{pack_id}", headers=self.auth(user_id))

    async def records(self, topic: str) -> list[Any]:
        return await kafka_io.read_all(self.kafka, topic)

    async def metric(self, instance: str, name: str) -> list[tuple[str, float]]:
        """(labels, value) of a Prometheus metric on a worker's /metrics."""
        async with httpx.AsyncClient(timeout=10) as client:
            text = (await client.get(f"{self.stack.url(instance)}/metrics")).text
        return [(line[len(name):line.rindex(" ")], float(line.split()[-1]))
                for line in text.splitlines() if line.startswith((name + " ", name + "{"))]

    async def shares_settled(self, instances: list[str], timeout: float = 60) -> None:
        """Until every generation instance owns some images.jobs partitions (the shares add up to 1)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            try:
                shares = [v for name in instances for _, v in await self.metric(name, "packline_provider_share")]
            except httpx.TransportError:
                shares = []  # an instance is still starting
            if len(shares) == len(instances) and all(shares) and abs(sum(shares) - 1) < 1e-9:
                return
            assert asyncio.get_running_loop().time() < deadline, f"images.jobs partitions not spread: {shares}"
            await asyncio.sleep(0.2)

    async def completed_images(self, pack_id: str) -> dict[str, set[str]]:
        """image id -> the event ids of its COMPLETED statuses on packs.status."""
        completed: dict[str, set[str]] = {}
        for ev in await self.decoded(self.topics.packs_status):
            if isinstance(ev, ImageStatus) and str(ev.pack_id) == pack_id and ev.image.status == "COMPLETED":
                completed.setdefault(ev.image.image_id, set()).add(ev.event_id)
        return completed

    async def decoded(self, topic: str) -> list[Any]:
        return [decode(r.value) for r in await self.records(topic)]
