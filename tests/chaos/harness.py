"""Chaos run: packs through a stack with several instances per service while processes
are SIGKILLed and restarted, the broker restarts once (or, on a cluster, brokers are
SIGKILLed in turn), and the backend fails transiently. At the end it waits for quiet,
runs `packline audit` and counts what went wrong.

`make chaos` and `make chaos-cluster` run the full size; tests/e2e/test_chaos.py short ones."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from services.cli import kafka_io
from services.cli.audit import pack_log
from services.cli.stack import Stack
from shared.auth import make_api_key
from shared.devbroker import free_port
from shared.devcluster import Cluster
from shared.events import TERMINAL_PACK, AccountCreate, CreditsBalance, ImageStatus
from shared.kafka import KafkaConfig, Outgoing
from shared.topics import Topics
from tests.harness import read_provider_calls


@dataclass
class ChaosConfig:
    packs: int = 200
    instances: int = 3
    kill_every_s: float = 5.0
    broker_restart: bool = True
    failure_rate: float = 0.15
    latency_ms: int = 300
    users: int = 10
    submit_per_s: float = 10.0
    quiet_timeout_s: float = 900.0
    chaos_after_submit_s: float = 20.0  # keep killing this long once every pack is in
    database_url: str | None = None
    seed: int = 1
    brokers: int = 1  # more than one: a cluster, topics replicated min(3, brokers) times, min ISR one less
    broker_kill_every_s: float = 0.0  # on a cluster: SIGKILL a broker this often (0: never)
    broker_down_s: float = 5.0  # how long a killed broker stays down
    min_broker_kills: int = 2  # with broker kills: go on until this many happened (the leader's and the controller's)


@dataclass
class ChaosReport:
    submitted: int = 0
    terminal: int = 0
    lost: int = 0
    duplicate_images: int = 0
    double_debits: int = 0
    double_refunds: int = 0
    ledger_drift: int = 0
    kills: list[str] = field(default_factory=list)
    broker_restarts: int = 0
    broker_kills: dict[str, int] = field(default_factory=dict)  # kind (leader, controller, other) -> count
    provider_calls: int = 0
    paid_twice: list[str] = field(default_factory=list)  # image attempts the provider was paid for twice, no kill to blame
    killed_mid_call: list[str] = field(default_factory=list)  # image attempts whose process died during the call
    api_5xx: int = 0
    api_unavailable_s: float = 0.0  # the longest time a pack request waited for its 202
    statuses: dict[str, int] = field(default_factory=dict)
    audit_output: str = ""
    seconds: float = 0.0

    def lines(self) -> list[str]:
        return [
            f"packs submitted   {self.submitted}",
            f"packs terminal    {self.terminal}   {dict(sorted(self.statuses.items()))}",
            f"packs lost        {self.lost}",
            f"duplicate images  {self.duplicate_images}",
            f"double debits     {self.double_debits}",
            f"double refunds    {self.double_refunds}",
            f"ledger drift      {self.ledger_drift}",
            f"provider calls    {self.provider_calls}: once per image attempt, except {len(self.paid_twice)} paid twice "
            f"{self.paid_twice}; made again after their process was killed mid-call: {len(self.killed_mid_call)} "
            f"{self.killed_mid_call}",
            f"kills             {len(self.kills)} ({', '.join(self.kills)})",
            f"broker restarts   {self.broker_restarts}",
            f"broker kills      {sum(self.broker_kills.values())} {dict(sorted(self.broker_kills.items()))}",
            f"api 5xx answers   {self.api_5xx}",
            f"api unavailable   {self.api_unavailable_s:.1f} s at the longest",
            f"wall time         {self.seconds:.0f} s",
        ]

    @property
    def clean(self) -> bool:
        return not (self.lost or self.duplicate_images or self.double_debits or self.double_refunds or self.ledger_drift
                    or self.paid_twice)


class Chaos:
    def __init__(self, cfg: ChaosConfig, work_dir: Path) -> None:
        self.cfg, self.dir = cfg, work_dir
        self.rng = random.Random(cfg.seed)
        ports = [(free_port(), free_port()) for _ in range(cfg.brokers)]
        self.cluster = Cluster(work_dir / "kafka", cfg.brokers, ports, fast_failover=cfg.brokers > 1)
        self.kafka = KafkaConfig(self.cluster.bootstrap)
        self.prefix = f"c{uuid.uuid4().hex[:8]}."
        self.topics = Topics(self.prefix)
        self.secret = uuid.uuid4().hex
        self.report = ChaosReport()
        self.enough_broker_kills = asyncio.Event()
        self.killed_pids: set[int] = set()
        self.call_log = work_dir / "provider-calls.jsonl"
        workers = [f"{k}-{i}" for k in ("credits", "generation", "notifier") for i in range(1, cfg.instances + 1)]
        instances = ("api", *workers)
        ports = {name: free_port() for name in instances}
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": self.cluster.bootstrap, "TOPIC_PREFIX": self.prefix, "PACKLINE_SECRET": self.secret,
            "VAR_DIR": str(work_dir / "var"), "TOPIC_PARTITIONS": "6", "API_PORT": str(ports["api"]),
            "LOCAL_IMAGE_LATENCY_MS": str(cfg.latency_ms), "LOCAL_IMAGE_FAILURE_RATE": str(cfg.failure_rate),
            "RETRY_MAX_ATTEMPTS": "10", "RETRY_BASE_DELAY_S": "0.5", "RETRY_MAX_DELAY_S": "4",
            "RATE_LIMIT_PER_S": "1000", "RATE_LIMIT_BURST": "1000", "API_KAFKA_TIMEOUT_S": "3",
            "REDRIVE_AFTER_S": "20", "REDRIVE_EVERY_S": "5", "LOCAL_IMAGE_CALL_LOG": str(work_dir / "provider-calls.jsonl"),
            "NOTIFIER_PUBLIC_URL": f"http://127.0.0.1:{ports['notifier-1']}",
            "API_PUBLIC_URL": f"http://127.0.0.1:{ports['api']}",
        }
        if cfg.database_url:
            env["DATABASE_URL"] = cfg.database_url
        self.env = env
        self.stack = Stack(env, work_dir / "logs", instances, ports)
        self.victims = list(workers)

    # --- the run ------------------------------------------------------------------
    async def run(self) -> ChaosReport:
        started = time.monotonic()
        await asyncio.to_thread(self.cluster.start, 120)
        try:
            self.stack.start()
            await asyncio.to_thread(self.stack.wait_healthy, 120)
            users = [f"chaos-{i}" for i in range(self.cfg.users)]
            for u in users:
                await self._command(AccountCreate(user_id=u, credits=10 * self.cfg.packs), u)
            stop = asyncio.Event()
            chaos = [asyncio.create_task(self._chaos(stop))]
            if self.cfg.broker_kill_every_s:
                chaos.append(asyncio.create_task(self._broker_chaos(stop)))
            pack_ids = await self._submit(users)
            try:
                await asyncio.wait_for(self._wait_quiet(pack_ids), self.cfg.chaos_after_submit_s)
            except TimeoutError:
                pass
            if self.cfg.broker_kill_every_s:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.enough_broker_kills.wait(), 10 * self.cfg.broker_kill_every_s + 120)
            stop.set()
            await asyncio.gather(*chaos)
            self._revive_all()
            await self._wait_quiet(pack_ids)
            await self._tally(pack_ids)
        finally:
            self.report.seconds = time.monotonic() - started
            self.stack.stop()
            await asyncio.to_thread(self.cluster.stop)
        return self.report

    async def _submit(self, users: list[str]) -> set[str]:
        """Each pack is POSTed until a 202, with one Idempotency-Key, whatever is killed meanwhile."""
        pack_ids: set[str] = set()
        body = {"product": {"name": "Chaos kettle", "description": "survives anything"}}
        async with httpx.AsyncClient(timeout=10) as client:
            for i in range(self.cfg.packs):
                user = users[i % len(users)]
                headers = {"Authorization": f"Bearer {make_api_key(self.secret, user)}", "Idempotency-Key": f"chaos-{i}"}
                first_try = time.monotonic()
                deadline = first_try + 300
                while time.monotonic() < deadline:
                    try:
                        r = await client.post(f"{self.stack.url('api')}/v1/packs", json=body, headers=headers)
                        if r.status_code == 202:
                            pack_ids.add(r.json()["pack_id"])
                            break
                        self.report.api_5xx += r.status_code >= 500
                    except httpx.HTTPError:
                        pass
                    await asyncio.sleep(0.5)
                self.report.api_unavailable_s = max(self.report.api_unavailable_s, time.monotonic() - first_try)
                await asyncio.sleep(1 / self.cfg.submit_per_s)
        self.report.submitted = len(pack_ids)
        return pack_ids

    async def _chaos(self, stop: asyncio.Event) -> None:
        restarted_broker = not self.cfg.broker_restart
        kills = 0
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), self.cfg.kill_every_s)
                return
            except TimeoutError:
                pass
            kills += 1
            if not restarted_broker and kills == 3:
                restarted_broker = True
                await asyncio.to_thread(self.cluster.stop)
                await asyncio.sleep(2)
                await asyncio.to_thread(self.cluster.start, 120)
                self.report.broker_restarts += 1
                continue
            victim = self.rng.choice(self.victims)
            self.killed_pids.add(self.stack.procs[victim].pid)
            self.stack.signal(victim, 9)
            self.report.kills.append(victim)
            await asyncio.sleep(0.5)
            self._revive_all()

    async def _broker_chaos(self, stop: asyncio.Event) -> None:
        """SIGKILL one broker every `broker_kill_every_s`: first the one leading most
        packs.requested partitions, then the active controller, then any; each comes back
        after `broker_down_s` and rejoins every ISR before the next kill."""
        kinds = ["leader", "controller"]  # then "other": any broker
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), self.cfg.broker_kill_every_s)
                return
            except TimeoutError:
                pass
            kind = kinds.pop(0) if kinds else "other"
            victim = await asyncio.to_thread(self._pick_broker, kind)
            self.cluster.kill(victim)
            self.report.broker_kills[kind] = self.report.broker_kills.get(kind, 0) + 1
            if sum(self.report.broker_kills.values()) >= self.cfg.min_broker_kills:
                self.enough_broker_kills.set()
            self.report.kills.append(f"broker-{victim}({kind})")
            await asyncio.sleep(self.cfg.broker_down_s)
            await asyncio.to_thread(self.cluster.restart, victim, 120)

    def _pick_broker(self, kind: str) -> int:
        if kind == "leader":
            counts = self.cluster.leader_counts(self.topics.packs_requested)
            return max(counts, key=lambda node: counts[node])
        if kind == "controller" and (controller := self.cluster.active_controller()) is not None:
            return controller
        return self.rng.choice([n.node_id for n in self.cluster.nodes])

    def _revive_all(self) -> None:
        """Restart every instance that is dead, killed by us or fallen over by itself."""
        for name, proc in list(self.stack.procs.items()):
            if proc.poll() is not None:
                self.stack.start(name)

    async def _statuses(self) -> tuple[dict[str, str], list[ImageStatus]]:
        return pack_log(await kafka_io.read_all(self.kafka, self.topics.packs_status))

    async def _wait_quiet(self, pack_ids: set[str]) -> None:
        deadline = time.monotonic() + self.cfg.quiet_timeout_s
        while time.monotonic() < deadline:
            try:
                last, _ = await self._statuses()
            except Exception:  # the broker may be restarting right now
                last = {}
            if last and all(last.get(p) in TERMINAL_PACK for p in pack_ids):
                return
            self._revive_all()
            await asyncio.sleep(2)

    async def _tally(self, pack_ids: set[str]) -> None:
        last, images = await self._statuses()
        terminal = [p for p in pack_ids if last.get(p) in TERMINAL_PACK]
        self.report.terminal = len(terminal)
        self.report.lost = len(pack_ids) - len(terminal)
        statuses: dict[str, int] = defaultdict(int)
        for p in terminal:
            statuses[str(last[p])] += 1
        self.report.statuses = dict(statuses)
        # A redelivered job re-reports an existing image with the same event id; an image
        # generated twice shows up as two distinct COMPLETED events for one run.
        completions: dict[tuple[str, str, int], set[str]] = defaultdict(set)
        for ev in images:
            if ev.image.status == "COMPLETED":
                completions[(str(ev.pack_id), ev.image.image_id, ev.run)].add(ev.event_id)
        self.report.duplicate_images = sum(1 for ids in completions.values() if len(ids) > 1)
        self._count_provider_calls()
        audit = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "services.cli", "audit", "--grace", "0"], env={**os.environ, **self.env},
            capture_output=True, text=True, timeout=300,
        )
        out = audit.stdout + audit.stderr
        self.report.audit_output = out
        self.report.double_debits = out.count("double debit")
        self.report.double_refunds = out.count("double refund")
        self.report.ledger_drift = out.count("drift")

    def _count_provider_calls(self) -> None:
        """Per image attempt, the provider is called once; a second call is excused only when
        the process that made the first one was SIGKILLed during or right after it."""
        finished: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for call in read_provider_calls(self.call_log):
            finished[_attempt(call)].append(call)
        started = [_attempt(call) for call in read_provider_calls(self.call_log, started=True)]
        self.report.provider_calls = len(started)
        for key in sorted(set(started)):
            calls = finished.get(key, [])
            unfinished = started.count(key) - len(calls)
            earlier = calls[:-1] if calls and calls[-1]["outcome"] == "ok" else calls
            if unfinished or any(c["pid"] in self.killed_pids for c in earlier):
                self.report.killed_mid_call.append(key)
            if len(calls) > 1 and any(c["pid"] not in self.killed_pids for c in calls[:-1]):
                self.report.paid_twice.append(key)

    async def _command(self, event: AccountCreate, user_id: str) -> None:
        """Account creation is idempotent, so it is simply asked again while a freshly
        started consumer group of several instances is still settling."""
        for attempt in range(5):
            try:
                reply = await kafka_io.request_reply(
                    self.kafka, Outgoing.of(self.topics.credits_commands, event, user_id),
                    self.topics.credits_events,
                    CreditsBalance, lambda e: e.command_id == event.event_id, timeout=60,
                )
                assert reply.balance is not None
                return
            except TimeoutError:
                if attempt == 4:
                    raise


def _attempt(call: dict[str, Any]) -> str:
    return f"{call['pack_id'][:8]}/{call['image_id']}#{call['run']}.{call['attempt']}"


def run(cfg: ChaosConfig, keep: bool = False) -> ChaosReport:
    work_dir = Path(tempfile.mkdtemp(prefix="packline-chaos-"))
    try:
        return asyncio.run(Chaos(cfg, work_dir).run())
    finally:
        if keep:
            print(f"work dir kept: {work_dir}")
        else:
            shutil.rmtree(work_dir, ignore_errors=True)

