"""Run the whole system as separate OS processes: `make up`, `make demo`, and the
end-to-end tests all use this one supervisor."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

SERVICES = ("credits", "generation", "api", "notifier")
# Batch work runs niced on a shared host: under a saturating burst the edges (api, notifier)
# still get the CPU they need to answer at once, and the workers take the rest.
WORKER_NICE = "10"
HEALTH_PORT_VARS = {"api": "API_PORT", "notifier": "NOTIFIER_PORT", "credits": "CREDITS_PORT", "generation": "GENERATION_PORT"}
DEFAULT_PORTS = {"api": 8000, "notifier": 8001, "credits": 8002, "generation": 8003}
# `packline up --instances N`: api-i and notifier-i listen on these plus i - 1; nginx on PROXY_PORT.
INSTANCE_PORT_BASE = {"api": 8010, "notifier": 8020}
PROXY_PORT = 8080


def scaled_out(instances: int) -> tuple[tuple[str, ...], dict[str, int]]:
    """The instance names and ports of a stack with `instances` api and notifier instances
    (one of each worker)."""
    names = [f"{service}-{i}" for service in ("api", "notifier") for i in range(1, instances + 1)]
    return ("credits", "generation", *names), {name: INSTANCE_PORT_BASE[kind(name)] + int(name.split("-")[1]) - 1 for name in names}


def kind(instance: str) -> str:
    """`generation-2` -> `generation`."""
    return instance.split("-", 1)[0]


class PortTaken(RuntimeError):
    """An instance could not bind its port: another process holds it."""


class Stack:
    """Instances are named `<service>` or `<service>-<n>`; each gets its own health port
    (`ports`, default the contract's) and log file."""

    def __init__(
        self, env: Mapping[str, str], log_dir: Path, services: tuple[str, ...] = SERVICES,
        ports: Mapping[str, int] | None = None,
    ) -> None:
        self.env = {**os.environ, **env}
        self.log_dir = log_dir
        self.services = services
        self.ports = dict(ports or {})
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        log_dir.mkdir(parents=True, exist_ok=True)

    def port(self, instance: str) -> int:
        if instance in self.ports:
            return self.ports[instance]
        return int(self.env.get(HEALTH_PORT_VARS[kind(instance)], DEFAULT_PORTS[kind(instance)]))

    def url(self, instance: str) -> str:
        return f"http://127.0.0.1:{self.port(instance)}"

    def start(self, service: str | None = None) -> None:
        for name in [service] if service else self.services:
            log = open(self.log_dir / f"{name}.log", "ab")
            env = {**self.env, HEALTH_PORT_VARS[kind(name)]: str(self.port(name))}
            if kind(name) in ("credits", "generation"):
                env.setdefault("PROCESS_NICE", self.env.get("WORKER_NICE", WORKER_NICE))
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "services.cli", "serve", kind(name)],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )

    def wait_healthy(self, timeout: float = 60.0, service: str | None = None) -> None:
        """Until each instance's own process answers /healthz with 200: another process
        already on the port (this one then fails to bind and exits) does not count."""
        deadline = time.monotonic() + timeout
        for name in [service] if service else self.services:
            while True:
                proc = self.procs[name]
                if proc.poll() is not None:
                    # The whole log: the lines of the shutdown after a failed bind can be many.
                    taken = "address already in use" in self.tail(name, lines=None)
                    raise (PortTaken if taken else RuntimeError)(f"{name} exited with {proc.returncode}; log:\n{self.tail(name)}")
                try:
                    reply = httpx.get(f"{self.url(name)}/healthz", timeout=2)
                    if reply.status_code == 200 and reply.json().get("pid") == proc.pid:
                        break
                except (httpx.HTTPError, ValueError):
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{name} not healthy after {timeout:.0f}s; log:\n{self.tail(name)}")
                time.sleep(0.2)

    def adopt(self, name: str, proc: subprocess.Popen[bytes]) -> None:
        """Watch and stop a process started elsewhere (the proxy) with the services."""
        self.procs[name] = proc

    def tail(self, service: str, lines: int | None = 40) -> str:
        """The last `lines` of an instance's log (None: all of it)."""
        path = self.log_dir / f"{service}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines if lines else 0:]) if path.exists() else ""

    def signal(self, service: str, sig: int) -> None:
        proc = self.procs[service]
        if proc.poll() is None:
            os.killpg(proc.pid, sig)

    def stop(self, service: str | None = None, timeout: float = 15.0) -> None:
        names = [service] if service else list(self.procs)
        for name in names:
            self.signal(name, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for name in names:
            proc = self.procs[name]
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.signal(name, signal.SIGKILL)
                proc.wait()

    def wait(self) -> int:
        """Block until a service dies (returns its code) or the caller is interrupted."""
        while True:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    print(f"{name} exited with {proc.returncode}; see {self.log_dir / name}.log", file=sys.stderr)
                    return proc.returncode or 1
            time.sleep(0.5)
