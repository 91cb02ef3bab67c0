"""Run a real single-node Apache Kafka (KRaft) from the Maven-resolved jars, no container.

Used by `make kafka`, `make up` and the test suite's session fixture. The jars come
from `deploy/kafka/pom.xml` (`make kafka-jars`) into `.cache/kafka-libs`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIBS = ROOT / ".cache" / "kafka-libs"
LOG4J = ROOT / "deploy" / "kafka" / "log4j2.properties"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Broker:
    data_dir: Path
    port: int = 9092
    controller_port: int = 9093

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "broker.pid"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "broker.log"

    def _properties(self) -> Path:
        # Single node: every internal topic must have replication factor 1 / min ISR 1,
        # otherwise the broker waits for replicas that will never exist.
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(self.data_dir / "data"),
            "num.partitions": "6",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "6",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "true",
            "log.retention.hours": "168",
        }
        path = self.data_dir / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        return path

    def _java(self, main: str, *args: str, **popen: object) -> list[str]:
        if not LIBS.is_dir() or not any(LIBS.glob("kafka_2.13-*.jar")):
            raise SystemExit(f"Kafka jars missing in {LIBS}: run `make kafka-jars`")
        return [
            "java", "-Xms256m", "-Xmx512m", "-XX:+UseG1GC",
            f"-Dlog4j2.configurationFile={LOG4J}",
            "-cp", f"{LIBS}/*", main, *args,
        ]

    def running_pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text())
            os.kill(pid, 0)
            return pid
        except (FileNotFoundError, ValueError, ProcessLookupError):
            return None

    def start(self, timeout: float = 60.0) -> subprocess.Popen[bytes] | None:
        """Format storage on first start, launch the broker, wait until it answers."""
        if self.running_pid():
            wait_ready(self.bootstrap, timeout)
            return None
        self.data_dir.mkdir(parents=True, exist_ok=True)
        props = self._properties()
        if not (self.data_dir / "data" / "meta.properties").exists():
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            cluster_id = "k" + cluster_id[1:] if cluster_id.startswith("-") else cluster_id
            subprocess.run(
                self._java("kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props)),
                check=True, stdout=subprocess.DEVNULL,
            )
        log = open(self.log_file, "ab")
        proc = subprocess.Popen(
            self._java("kafka.Kafka", str(props)), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pid_file.write_text(str(proc.pid))
        try:
            wait_ready(self.bootstrap, timeout, proc)
        except Exception:
            self.stop()
            raise
        return proc

    def stop(self, timeout: float = 30.0) -> None:
        pid = self.running_pid()
        if pid is None:
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            # Reap it if it is our child, so it does not linger as a zombie.
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            time.sleep(0.2)
        else:
            os.kill(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)


def wait_ready(bootstrap: str, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Ready means a Kafka client gets cluster metadata back, not merely an open port."""
    from aiokafka.admin import AIOKafkaAdminClient

    async def probe() -> bool:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
        try:
            await admin.start()
            await admin.list_topics()
            return True
        except Exception:
            return False
        finally:
            await admin.close()

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"Kafka exited with code {proc.returncode}; see its log")
        if asyncio.run(probe()):
            return
        time.sleep(0.5)
    raise TimeoutError(f"Kafka at {bootstrap} did not answer within {timeout:.0f}s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="local Apache Kafka broker")
    parser.add_argument("action", choices=["start", "stop", "run"])
    parser.add_argument("--data-dir", default=str(ROOT / "var" / "kafka"))
    parser.add_argument("--port", type=int, default=9092)
    parser.add_argument("--controller-port", type=int, default=9093)
    args = parser.parse_args(argv)
    broker = Broker(Path(args.data_dir), args.port, args.controller_port)
    if args.action == "stop":
        broker.stop()
        print("kafka stopped")
        return
    proc = broker.start()
    print(f"kafka ready at {broker.bootstrap} (log: {broker.log_file})")
    if args.action == "run" and proc is not None:
        signal.signal(signal.SIGTERM, lambda *_: broker.stop())
        try:
            proc.wait()
        except KeyboardInterrupt:
            broker.stop()
        sys.exit(0)


if __name__ == "__main__":
    main()
