"""Test-side helpers around a running stack: accounts, pack requests, SSE, Kafka reads."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import httpx
from aiokafka import TopicPartition
from aiokafka.structs import RecordMetadata

from services.cli import kafka_io, sse
from services.cli.stack import SERVICES, PortTaken, Stack
from shared.auth import make_api_key, make_named_key, new_key_id
from shared.devbroker import free_port
from shared.events import AccountCreate, BalanceQuery, CreditsBalance, ImageStatus, decode
from shared.kafka import KafkaConfig, Outgoing
from shared.settings import CommonSettings
from shared.topics import Topics

if TYPE_CHECKING:
    from tests.fake_images_api import FakeImagesApi

FAST_BACKEND = {"LOCAL_IMAGE_LATENCY_MS": "200", "RETRY_BASE_DELAY_S": "0.5", "RETRY_MAX_DELAY_S": "2"}
OPERATOR = "ops-test"  # the user id of every stack's operator key
CALL_LOG = "provider-calls.jsonl"  # in the stack's tmp dir: LOCAL_IMAGE_CALL_LOG of every stack


def read_provider_calls(path: Path | str, started: bool = False) -> list[dict[str, Any]]:
    """The local backend's call log (LOCAL_IMAGE_CALL_LOG): one dict per provider call, in the
    order the calls ended: pack_id, image_id, run, attempt, pid, start and end (epoch
    seconds), outcome (`ok`, `transient`, `permanent`, `cancelled` or `error`). With
    `started`, one per call that started instead (outcome `started`), ended or not. No file: no calls."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return []
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [c for c in lines if (c["outcome"] == "started") == started]


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
        for attempt in range(3):
            stack, env = cls._stack(bootstrap, tmp, services, prefix, secret, overrides)
            stack.start()
            try:
                stack.wait_healthy(90)
                break
            except PortTaken:
                # Another test's process took a port between free_port() and the bind.
                stack.stop()
                if attempt == 2:
                    print_warnings(tmp / "logs")
                    raise
                (tmp / "logs").rename(tmp / f"logs-port-taken-{attempt}")  # the next try's logs start clean
            except BaseException:
                stack.stop()
                print_warnings(tmp / "logs")
                raise
        try:
            yield cls(stack, env, bootstrap, Topics(prefix), secret, tmp)
        except BaseException:
            print_warnings(tmp / "logs")  # the services' side of a failure, in pytest's report
            raise
        finally:
            stack.stop()

    @staticmethod
    def _stack(
        bootstrap: str, tmp: Path, services: tuple[str, ...], prefix: str, secret: str, overrides: dict[str, str],
    ) -> tuple[Stack, dict[str, str]]:
        """A stack on fresh ports."""
        ports = {name: str(free_port()) for name in ("API_PORT", "NOTIFIER_PORT", "CREDITS_PORT", "GENERATION_PORT")}
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "TOPIC_PREFIX": prefix, "PACKLINE_SECRET": secret,
            "VAR_DIR": str(tmp), "TOPIC_PARTITIONS": "3", **ports, "LOCAL_IMAGE_CALL_LOG": str(tmp / CALL_LOG),
            "API_PUBLIC_URL": f"http://127.0.0.1:{ports['API_PORT']}",
            "NOTIFIER_PUBLIC_URL": f"http://127.0.0.1:{ports['NOTIFIER_PORT']}",
            # The CLI's operator (`packline dlq replay`): a key with the ops scope.
            "PACKLINE_OPERATOR_KEY": make_named_key(secret, OPERATOR, new_key_id(), ["ops"]),
            **FAST_BACKEND, **overrides,
        }
        return Stack(env, tmp / "logs", services, ports={name: free_port() for name in services if "-" in name}), env

    @property
    def kafka(self) -> KafkaConfig:
        """The client settings the services use (a secured listener's too)."""
        return CommonSettings.model_validate({k.lower(): v for k, v in self.env.items()}).kafka

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

    async def publish(self, messages: list[Outgoing]) -> list[RecordMetadata]:
        """Publish and wait for the acks; where each message landed."""
        async with kafka_io.open_publisher(self.kafka) as publisher:
            futures = await publisher.enqueue(messages, keep=False)
            await publisher.wait(futures)
        return [f.result() for f in futures]

    def provider_calls(self, pack_id: str | None = None) -> list[dict[str, Any]]:
        """Every call the local backend made for this stack (of one pack), in the order they ended."""
        calls = read_provider_calls(self.env["LOCAL_IMAGE_CALL_LOG"])
        return [c for c in calls if pack_id is None or c["pack_id"] == pack_id]

    async def committed(self, group: str, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        """The consumer group's committed offsets (the next offset it will read; -1: none)."""
        admin = self.kafka.admin(client_id="packline-test")
        await admin.start()
        try:
            offsets = await admin.list_consumer_group_offsets(group, partitions=tps)
        finally:
            await admin.close()
        return {tp: offsets[tp].offset if tp in offsets else -1 for tp in tps}

    async def consumed(self, group: str, sent: list[RecordMetadata], timeout: float = 60) -> None:
        """Until `group` has committed past every message in `sent`. Its consumers commit only
        after a message's effects are acknowledged, so those effects have happened."""
        need: dict[TopicPartition, int] = {}
        for meta in sent:
            tp = TopicPartition(meta.topic, meta.partition)
            need[tp] = max(need.get(tp, 0), meta.offset + 1)
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            have = await self.committed(group, list(need))
            if all(have[tp] >= n for tp, n in need.items()):
                return
            assert asyncio.get_running_loop().time() < deadline, f"{group} committed {have}, needs {need}"
            await asyncio.sleep(0.2)


# --- Keys (tests/e2e/test_keys.py): the CLI, restarts with other settings, a long revocation feed ---

async def run_cli(stack: RunningStack, *args: str) -> subprocess.CompletedProcess[str]:
    """`packline ARGS...` against the stack (its env: topics, secrets), exit code checked."""
    out = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "services.cli", *args], env={**os.environ, **stack.stack.env},
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out


def restart(stack: RunningStack, *services: str, wait: bool = True, **env: str) -> None:
    """Stop the services, change their settings (e.g. PACKLINE_SECRETS), start them again."""
    for name in services:
        stack.stack.stop(name)
    stack.stack.env.update(env)
    stack.env.update(env)
    for name in services:
        stack.stack.start(name)
    for name in services if wait else ():
        stack.stack.wait_healthy(90, name)


async def flood_revocations(stack: RunningStack, n: int) -> None:
    """n revocations of other users' keys (half user-wide, half one named key each) on
    auth.revocations: a long feed for the api and the notifier to read at start."""
    from tests.bench.revocations_bench import fill, records

    await fill(stack.kafka, stack.topics.auth_revocations, records(n, named_share=0.5, users=max(1, n // 2)))


def print_warnings(log_dir: Path, most: int = 40) -> None:
    """The last warnings and errors each service logged."""
    for log in sorted(log_dir.glob("*.log")):
        lines = [line for line in log.read_text(errors="replace").splitlines()
                 if any(word in line for word in ("WARNING", "ERROR", "Traceback", "Error:"))]
        if lines:
            print(f"--- {log.name}: last {min(most, len(lines))} of {len(lines)} warnings and errors")
            print("\n".join(lines[-most:]))


async def rebalance_mid_generation(s: RunningStack, fake: FakeImagesApi) -> None:
    """A stack with generation-1 and generation-2 on the fake provider: generation-1 alone
    starts the 60 images of 10 packs, each call held by the provider; generation-2 joins
    meanwhile and the rebalance hands it jobs in flight, which it waits for; then the calls
    answer. Every pack completes and the provider is paid once per image."""
    # generation-1 alone owns every partition, with no rebalance left under way when the packs come.
    await s.shares_settled(["generation-1", "generation-2"])
    s.stack.stop("generation-2")
    await s.shares_settled(["generation-1"])
    fake.plan.extend([("hold",)] * 60)  # the first 60 calls answer once released
    user = await s.create_user(credits=60)
    packs = [(await s.post_pack(user)).json()["pack_id"] for _ in range(10)]
    deadline = time.monotonic() + 60
    while len(fake.requests) < 60:  # every image is at the provider
        assert time.monotonic() < deadline, f"{len(fake.requests)} calls"
        await asyncio.sleep(0.2)
    s.stack.start("generation-2")  # a rebalance hands some partitions, and their unfinished jobs, over
    await s.shares_settled(["generation-1", "generation-2"])
    deadline = time.monotonic() + 60
    while not sum(v for labels, v in await s.metric("generation-2", "packline_images_total") if "waiting_for_claim" in labels):
        assert time.monotonic() < deadline, "generation-2 never took over a job in flight"
        await asyncio.sleep(0.2)
    fake.release()
    for pack_id in packs:
        final = (await s.events(pack_id, user, timeout=120))[-1].json()
        assert final["status"] == "COMPLETED" and final["charged"] == 6
    assert len(fake.requests) == 60, "an image was paid for twice"


async def results_applied(s: RunningStack, pack_id: str, image_ids: set[str], timeout: float = 60) -> None:
    """Until credits has applied these images' results (committed past them on images.results):
    only then are they before a cancel sent now in the pack's log, and so delivered."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        mine = [r for r in await s.records(s.topics.images_results)
                if (ev := decode(r.value)) and str(getattr(ev, "pack_id", "")) == pack_id
                and getattr(ev, "image_id", None) in image_ids]
        if {getattr(decode(r.value), "image_id", None) for r in mine} == image_ids:
            break
        assert asyncio.get_running_loop().time() < deadline, f"no results of {image_ids} yet"
        await asyncio.sleep(0.2)
    await s.consumed(f"{s.env['TOPIC_PREFIX']}packline-credits", cast(list[RecordMetadata], mine), timeout)


@contextlib.asynccontextmanager
async def serving(app: Any, port: int, log_level: str = "warning") -> AsyncIterator[None]:
    """An ASGI app on uvicorn in this event loop, on 127.0.0.1:`port`, while the block runs."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level=log_level, lifespan="off",
                                           timeout_graceful_shutdown=1))
    task = asyncio.create_task(server.serve())
    for _ in range(500):  # uvicorn has no event to wait on
        if server.started:
            break
        await asyncio.sleep(0.02)
    try:
        yield
    finally:
        server.should_exit = True
        await task
