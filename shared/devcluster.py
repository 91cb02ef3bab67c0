"""N combined broker+controller KRaft nodes from the same jars (shared/devbroker.py runs one),
and the `python -m shared.devbroker start|stop|run [--brokers N]` command line.

Ports and data dirs (defaults; --port/--controller-port move the bases):
  N=1  client 127.0.0.1:9092, controller 9093, data in var/kafka (the historical layout)
  N=3  node i=1..3: client 9092+2*(i-1) (9092, 9094, 9096), controller 9093+2*(i-1)
       (9093, 9095, 9097), data in var/kafka/node-<i>; each node logs to its own broker.log
Replication follows the node count: RF = min(3, N), min ISR = max(1, RF-1) for the internal
topics and new topics alike; unclean leader election is off; -Xmx384m per node when N > 1.
`stop` stops every node running from the data dir, whatever N started it.

    cluster = Cluster(tmp / "kafka", brokers=3, ports=[(free_port(), free_port()) for _ in range(3)],
                      fast_failover=True)
    cluster.start(120)
    try:
        leader = cluster.partition_leaders("orders")[0]
        cluster.kill(leader)           # SIGKILL, storage kept
        ...
        cluster.restart(leader)        # same storage; returns once it is back in every ISR
    finally:
        cluster.stop()

Every node votes in the static quorum (controller.quorum.voters lists all of them) and all are
formatted with one cluster id before their first start. With `security` the client listener of
each node is SASL_SSL/SCRAM-SHA-512; inter-broker traffic uses a PLAINTEXT listener named
INTERNAL on a third 127.0.0.1 port and the controller listener stays PLAINTEXT too.

The synchronous helpers (leader_counts, active_controller, ...) run their own event loop; from
async code call them through `asyncio.to_thread`.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import signal
import subprocess
import sys
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from aiokafka.client import AIOKafkaClient
from aiokafka.protocol.api import Request
from aiokafka.protocol.metadata import MetadataRequest

from shared.devbroker import ROOT, Broker, admin_kwargs, new_cluster_id, wait_ready
from shared.devsecurity import Security
from shared.kraftquorum import DescribeQuorumRequest

T = TypeVar("T")

# Tests only: fence a silent broker after 3 s instead of 9 s, and let the controller quorum notice
# a dead active controller after ~1 s instead of 2 s (+ up to 1 s election backoff).
FAST_FAILOVER = {
    "broker.session.timeout.ms": "3000",
    "broker.heartbeat.interval.ms": "500",
    "controller.quorum.fetch.timeout.ms": "1000",
    "controller.quorum.election.timeout.ms": "500",
    "controller.quorum.election.backoff.max.ms": "500",
}


def default_ports(brokers: int, port: int = 9092, controller_port: int = 9093) -> list[tuple[int, int]]:
    """Node i (1-based) gets client port `port + 2*(i-1)` and controller port `controller_port + 2*(i-1)`."""
    return [(port + 2 * i, controller_port + 2 * i) for i in range(brokers)]


def node_dirs(data_dir: Path) -> list[Path]:
    """Every node directory that may hold a pid file: the one-node layout and node-<i>."""
    return [data_dir, *sorted(data_dir.glob("node-*"))]


def running_brokers(data_dir: Path) -> int:
    """Node count of what runs from `data_dir`: the live node-<i> dirs, else 1."""
    return sum(Broker(d).running_pid() is not None for d in Path(data_dir).glob("node-*")) or 1


def stop_all(data_dir: Path, timeout: float = 30.0) -> int:
    """Stop every node running from `data_dir`, whatever node count started it."""
    return _stop([Broker(d) for d in node_dirs(Path(data_dir))], timeout)


def _stop(nodes: Sequence[Broker], timeout: float) -> int:
    # SIGTERM all first: shut down one by one, the survivors would re-elect and move leaders each time.
    pids = [(node, node.signal(signal.SIGTERM)) for node in nodes]
    deadline = time.monotonic() + timeout
    for node, pid in pids:
        if pid is not None:
            node.wait_stopped(pid, deadline)
    return sum(pid is not None for _, pid in pids)


def _sync(coro: Coroutine[Any, Any, T]) -> T:
    """asyncio.run, also when the caller already runs an event loop (then in a helper thread)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


@dataclass(frozen=True)
class Quorum:
    leader_id: int | None  # the active controller, None while an election is running
    leader_epoch: int
    high_watermark: int
    voters: dict[int, int]  # node id -> log end offset of __cluster_metadata as the leader knows it


class Cluster:
    def __init__(self, data_dir: Path, brokers: int = 3, ports: Sequence[tuple[int, ...]] | None = None,
                 security: Security | None = None, fast_failover: bool = False,
                 overrides: dict[str, str] | None = None) -> None:
        """`ports`: per node (client_port, controller_port[, internal_port]); default `default_ports`.
        One node keeps the historical layout (data_dir itself); several use data_dir/node-<i>."""
        ports = list(ports or default_ports(brokers))
        if brokers < 1 or len(ports) != brokers:
            raise ValueError(f"{brokers} brokers need {brokers} port tuples, got {ports}")
        self.data_dir, self.security = Path(data_dir), security
        settings = {**(FAST_FAILOVER if fast_failover else {}), **(overrides or {})}
        voters = ",".join(f"{i}@127.0.0.1:{p[1]}" for i, p in enumerate(ports, 1))
        self.nodes = [
            Broker(self.data_dir if brokers == 1 else self.data_dir / f"node-{i}", p[0], p[1], node_id=i, voters=voters,
                   cluster_size=brokers, security=security, internal_port=p[2] if len(p) > 2 else None, overrides=settings)
            for i, p in enumerate(ports, 1)
        ]

    @property
    def bootstrap(self) -> str:
        return ",".join(node.bootstrap for node in self.nodes)

    def node(self, node_id: int) -> Broker:
        return next(n for n in self.nodes if n.node_id == node_id)

    def running(self) -> bool:
        """Every node's JVM is up (says nothing about readiness; `start` waits for that)."""
        return all(n.running_pid() is not None for n in self.nodes)

    # --- lifecycle ------------------------------------------------------------------------
    def start(self, timeout: float = 120.0) -> list[subprocess.Popen[bytes]]:
        """Format unformatted nodes (one cluster id for all), launch the stopped ones, and wait
        until the metadata names every node as a live broker. Returns the processes it launched."""
        self.format()
        procs = [node.launch() for node in self.nodes if node.running_pid() is None]
        try:
            wait_ready(self.bootstrap, timeout, security=self.security, brokers=len(self.nodes), procs=procs)
        except Exception:
            if procs:
                self.stop()
            raise
        return procs

    def format(self) -> None:
        ids = {cid for cid in (n.formatted_cluster_id() for n in self.nodes) if cid}
        if len(ids) > 1:
            raise RuntimeError(f"nodes under {self.data_dir} were formatted for different clusters: {sorted(ids)}")
        cluster_id = ids.pop() if ids else new_cluster_id()
        todo = [n for n in self.nodes if n.formatted_cluster_id() is None]
        procs = [subprocess.Popen(n.format_command(cluster_id), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for n in todo]
        for node, proc in zip(todo, procs, strict=True):
            _, err = proc.communicate()
            if proc.returncode:
                raise RuntimeError(f"formatting {node.data_dir} failed: {err.decode(errors='replace')}")

    def stop(self, timeout: float = 30.0) -> None:
        _stop(self.nodes, timeout)

    def kill(self, node_id: int) -> None:
        """SIGKILL one node: no controlled shutdown, leaders move only once the controller fences it."""
        self.node(node_id).kill()

    def restart(self, node_id: int, timeout: float = 60.0) -> None:
        """Start a stopped/killed node on its existing storage; return once it answers and is back
        in the ISR of every partition it replicates."""
        node = self.node(node_id)
        if node.running_pid() is None:
            proc = node.launch()
            wait_ready(node.bootstrap, timeout, proc, security=self.security, brokers=len(self.nodes))
        deadline = time.monotonic() + timeout
        while (lagging := self._lagging(node_id)) and time.monotonic() < deadline:
            time.sleep(0.5)
        if lagging:
            raise TimeoutError(f"node {node_id} not back in the ISR of {lagging} after {timeout:.0f}s")

    # --- inspection -----------------------------------------------------------------------
    def ask(self, request: Request[Any]) -> dict[str, Any]:
        """Send one protocol request to the first live node that answers it (a killed node may
        still be listed in the metadata until it is fenced, so no random node); returns it as a dict."""
        errors = []
        for node in self.nodes:
            if node.running_pid() is not None:
                try:
                    return _sync(_ask(node, self.security, request))
                except Exception as exc:
                    errors.append(f"node {node.node_id}: {exc!r}")
        raise RuntimeError(f"no live node answered {type(request).__name__}: {errors}")

    def describe_topics(self, topics: list[str] | None = None) -> list[dict[str, Any]]:
        """Metadata per topic: [{"topic", "partitions": [{"partition", "leader", "replicas", "isr", ...}]}]."""
        return list(self.ask(MetadataRequest(topics, allow_auto_topic_creation=False))["topics"])

    def partition_leaders(self, topic: str) -> dict[int, int]:
        """partition -> leader node id (-1 while a partition has none)."""
        (described,) = self.describe_topics([topic])
        return {p["partition"]: p["leader"] for p in described["partitions"]}

    def leader_counts(self, topic: str) -> dict[int, int]:
        """node id -> partitions of `topic` it leads (0 for nodes leading none)."""
        counts = {node.node_id: 0 for node in self.nodes}
        for leader in self.partition_leaders(topic).values():
            if leader >= 0:
                counts[leader] = counts.get(leader, 0) + 1
        return counts

    def _lagging(self, node_id: int) -> list[str]:
        return [f"{t['topic']}-{p['partition']}" for t in self.describe_topics()
                for p in t["partitions"] if node_id in p["replicas"] and node_id not in p["isr"]]

    def quorum(self) -> Quorum:
        """The KRaft metadata quorum as the active controller reports it: DescribeQuorum, which a
        broker forwards to the active controller (what kafka-metadata-quorum.sh uses)."""
        response = self.ask(DescribeQuorumRequest())
        partition = response["topics"][0]["partitions"][0] if response["topics"] else {}
        if response["error_code"] or partition.get("error_code", -1):
            raise RuntimeError(f"DescribeQuorum failed: {response}")
        leader = partition["leader_id"]
        return Quorum(leader if leader >= 0 else None, partition["leader_epoch"], partition["high_watermark"],
                      {v["replica_id"]: v["log_end_offset"] for v in partition["current_voters"]})

    def active_controller(self) -> int | None:
        """Node id of the active KRaft controller (leader of __cluster_metadata); None mid-election."""
        return self.quorum().leader_id


async def _ask(node: Broker, security: Security | None, request: Request[Any]) -> dict[str, Any]:
    client = AIOKafkaClient(**admin_kwargs(node.bootstrap, security, request_timeout_ms=5000))
    try:
        await client.bootstrap()
        return dict((await client.send(node.node_id, request)).to_object())
    finally:
        await client.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="local Apache Kafka (KRaft) broker or cluster")
    parser.add_argument("action", choices=["start", "stop", "run"])
    parser.add_argument("--brokers", type=int, default=1, help="number of nodes (1 default, 3 for a replicated cluster)")
    parser.add_argument("--data-dir", default=str(ROOT / "var" / "kafka"))
    parser.add_argument("--port", type=int, default=9092, help="client port of node 1; node i adds 2*(i-1)")
    parser.add_argument("--controller-port", type=int, default=9093, help="controller port of node 1; node i adds 2*(i-1)")
    args = parser.parse_args(argv)
    data_dir = Path(args.data_dir)
    if args.action == "stop":
        print(f"kafka stopped ({stop_all(data_dir)} node(s))")
        return
    cluster = Cluster(data_dir, args.brokers, default_ports(args.brokers, args.port, args.controller_port))
    ours = {node.data_dir for node in cluster.nodes}
    if others := [str(d) for d in node_dirs(data_dir) if d not in ours and Broker(d).running_pid()]:
        raise SystemExit(f"Kafka already runs from {', '.join(others)} with another node count; stop it first "
                         "(python -m shared.devbroker stop)")
    procs = cluster.start(timeout=120)
    for node in cluster.nodes:
        print(f"kafka node {node.node_id} at {node.bootstrap} (log: {node.log_file})")
    print(f"kafka ready: KAFKA_BOOTSTRAP_SERVERS={cluster.bootstrap}")
    if args.action == "run" and procs:
        signal.signal(signal.SIGTERM, lambda *_: cluster.stop())
        try:
            while any(p.poll() is None for p in procs):
                time.sleep(0.5)
        except KeyboardInterrupt:
            cluster.stop()
        sys.exit(0)
