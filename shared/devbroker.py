"""Run a real Apache Kafka (KRaft) node from the Maven-resolved jars, no container.

Used by `make kafka`, `make up` and the test suite. The jars come from `deploy/kafka/pom.xml`
(`make kafka-jars`) into `.cache/kafka-libs`. A node is a combined broker+controller; `Broker`
with its defaults is a one-node cluster, `shared.devcluster.Cluster` runs several, and
`python -m shared.devbroker start|stop|run [--brokers N]` is the command line for both
(ports and directories: see shared/devcluster.py).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.devsecurity import Security

ROOT = Path(__file__).resolve().parent.parent
LIBS = ROOT / ".cache" / "kafka-libs"
LOG4J = ROOT / "deploy" / "kafka" / "log4j2.properties"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def new_cluster_id() -> str:
    cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    return "k" + cluster_id[1:] if cluster_id.startswith("-") else cluster_id


def java(main: str, *args: str, heap: tuple[str, ...] = ("-Xms256m", "-Xmx512m")) -> list[str]:
    if not LIBS.is_dir() or not any(LIBS.glob("kafka_2.13-*.jar")):
        raise SystemExit(f"Kafka jars missing in {LIBS}: run `make kafka-jars`")
    return ["java", *heap, "-XX:+UseG1GC", f"-Dlog4j2.configurationFile={LOG4J}", "-cp", f"{LIBS}/*", main, *args]


@dataclass
class Broker:
    """One KRaft node. Alone (the defaults) it is a one-node cluster; `shared.devcluster`
    sets node_id/voters/cluster_size to make it one of several."""

    data_dir: Path
    port: int = 9092
    controller_port: int = 9093
    node_id: int = 1
    voters: str = ""  # controller.quorum.voters; empty: this node alone
    cluster_size: int = 1
    security: Security | None = None  # client listener becomes SASL_SSL + SCRAM-SHA-512
    internal_port: int | None = None  # PLAINTEXT inter-broker listener, used (and defaulted) with security
    overrides: dict[str, str] = field(default_factory=dict)
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)
        if self.security is not None and self.internal_port is None:
            self.internal_port = free_port()

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "broker.pid"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "broker.log"

    @property
    def properties_file(self) -> Path:
        return self.data_dir / "server.properties"

    @property
    def pid(self) -> int | None:
        return self.running_pid()

    def properties(self) -> dict[str, str]:
        rf = min(3, self.cluster_size)
        min_isr = str(max(1, rf - 1))
        client = "CLIENT" if self.security else "PLAINTEXT"
        listeners = {client: self.port}
        if self.security:
            listeners["INTERNAL"] = self.internal_port or 0
        advertised = ",".join(f"{name}://127.0.0.1:{port}" for name, port in listeners.items())
        props = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            "controller.quorum.voters": self.voters or f"{self.node_id}@127.0.0.1:{self.controller_port}",
            "listeners": f"{advertised},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": advertised,
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,INTERNAL:PLAINTEXT,CLIENT:SASL_SSL",
            "inter.broker.listener.name": "INTERNAL" if self.security else "PLAINTEXT",
            "log.dirs": str(self.data_dir / "data"),
            "num.partitions": "6",
            # Internal topics must fit the node count, or the broker waits for replicas that never come.
            "default.replication.factor": str(rf),
            "min.insync.replicas": min_isr,
            "offsets.topic.replication.factor": str(rf),
            "offsets.topic.num.partitions": "6",
            "transaction.state.log.replication.factor": str(rf),
            "transaction.state.log.min.isr": min_isr,
            "share.coordinator.state.topic.replication.factor": str(rf),
            "share.coordinator.state.topic.min.isr": min_isr,
            "unclean.leader.election.enable": "false",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "true",
            "log.retention.hours": "168",
        }
        if self.security:
            props.update(self.security.broker_properties("CLIENT"))
        return {**props, **self.overrides}

    def write_properties(self) -> Path:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.properties_file.write_text("".join(f"{k}={v}\n" for k, v in self.properties().items()))
        return self.properties_file

    def _heap(self) -> tuple[str, ...]:
        return ("-Xms256m", "-Xmx512m") if self.cluster_size == 1 else ("-Xms128m", "-Xmx384m")

    def formatted_cluster_id(self) -> str | None:
        meta = self.data_dir / "data" / "meta.properties"
        if not meta.exists():
            return None
        for line in meta.read_text().splitlines():
            if line.startswith("cluster.id="):
                return line.split("=", 1)[1].strip()
        return None

    def format_command(self, cluster_id: str) -> list[str]:
        """StorageTool format (with the SCRAM user when secured); run once, before the first start."""
        scram = ["--add-scram", self.security.scram_arg()] if self.security else []
        return java("kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(self.write_properties()), *scram,
                    heap=("-Xmx256m",))

    def launch(self) -> subprocess.Popen[bytes]:
        """Start the JVM (storage already formatted) without waiting for it."""
        if busy := [p for p in (self.port, self.controller_port, self.internal_port) if p and not _port_free(p)]:
            # Else another broker answering there would pass for this one while it dies on bind.
            raise RuntimeError(f"Kafka node {self.node_id}: port(s) {busy} already in use on 127.0.0.1")
        props = self.write_properties()
        with open(self.log_file, "ab") as log:
            self._proc = subprocess.Popen(java("kafka.Kafka", str(props), heap=self._heap()), stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True)
        self.pid_file.write_text(str(self._proc.pid))
        return self._proc

    def running_pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text())
        except (FileNotFoundError, ValueError):
            return None
        return pid if _alive(pid, str(self.properties_file)) else None

    def start(self, timeout: float = 60.0) -> subprocess.Popen[bytes] | None:
        """Format storage on first start, launch the broker, wait until it answers."""
        if self.running_pid():
            wait_ready(self.bootstrap, timeout, security=self.security)
            return None
        if self.formatted_cluster_id() is None:
            subprocess.run(self.format_command(new_cluster_id()), check=True, stdout=subprocess.DEVNULL)
        proc = self.launch()
        try:
            wait_ready(self.bootstrap, timeout, proc, security=self.security)
        except Exception:
            self.stop()
            raise
        return proc

    def signal(self, sig: int) -> int | None:
        pid = self.running_pid()
        if pid is not None:
            os.kill(pid, sig)
        return pid

    def wait_stopped(self, pid: int, deadline: float) -> None:
        """Wait for `pid` to exit (SIGKILL at the deadline), then forget it."""
        while _alive(pid, str(self.properties_file)):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                deadline = float("inf")
            time.sleep(0.1)
        self._proc = None
        self.pid_file.unlink(missing_ok=True)

    def stop(self, timeout: float = 30.0) -> None:
        pid = self.signal(signal.SIGTERM)
        if pid is not None:
            self.wait_stopped(pid, time.monotonic() + timeout)

    def kill(self) -> None:
        """SIGKILL: no controlled shutdown, no flush; the storage stays for a later start."""
        pid = self.signal(signal.SIGKILL)
        if pid is not None:
            self.wait_stopped(pid, float("inf"))


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the JVM does: TIME_WAIT is no obstacle
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _alive(pid: int, marker: str) -> bool:
    """True while `pid` runs and is this node's JVM (a stale pid file may name another process)."""
    try:
        os.waitpid(pid, os.WNOHANG)  # reap our own dead child, else it lingers as a zombie
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:
        return marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return not Path("/proc/self").exists()  # no procfs (macOS): trust the pid file
    except OSError:
        return False


def admin_kwargs(bootstrap: str, security: Security | None, **extra: Any) -> dict[str, Any]:
    return {"bootstrap_servers": bootstrap, **(security.client_kwargs() if security else {}), **extra}


def wait_ready(bootstrap: str, timeout: float, proc: subprocess.Popen[bytes] | None = None,
               security: Security | None = None, brokers: int = 1,
               procs: list[subprocess.Popen[bytes]] | None = None) -> None:
    """Ready means a Kafka client gets cluster metadata naming at least `brokers` live
    brokers back, not merely an open port."""
    from aiokafka.admin import AIOKafkaAdminClient

    async def probe() -> bool:
        admin = AIOKafkaAdminClient(**admin_kwargs(bootstrap, security, request_timeout_ms=3000))
        try:
            await admin.start()
            return len((await admin.describe_cluster())["brokers"]) >= brokers
        except Exception:
            return False
        finally:
            await admin.close()

    watched = [p for p in [proc, *(procs or [])] if p is not None]
    deadline = time.monotonic() + timeout
    # aiokafka logs `Unable connect to ...` for each probe until the JVM listens: expected, so dropped
    # for this thread's probes only (other clients in the process keep their errors).
    thread, bootstrap_log = threading.get_ident(), logging.getLogger("aiokafka")  # aiokafka.client logs here

    def others(record: logging.LogRecord) -> bool:
        return record.thread != thread

    bootstrap_log.addFilter(others)
    try:
        while time.monotonic() < deadline:
            for p in watched:
                if p.poll() is not None:
                    raise RuntimeError(f"Kafka (pid {p.pid}) exited with code {p.returncode}; see its broker.log")
            if asyncio.run(probe()):
                return
            time.sleep(0.5)
    finally:
        bootstrap_log.removeFilter(others)
    raise TimeoutError(f"Kafka at {bootstrap} did not answer within {timeout:.0f}s")


def main(argv: list[str] | None = None) -> None:
    """`python -m shared.devbroker start|stop|run [--brokers N]` (implemented next to Cluster)."""
    from shared.devcluster import main as cli

    cli(argv)


if __name__ == "__main__":
    main()
