"""`packline up` (everything in the foreground) and `packline demo` (one pack end to end)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from typing import Annotated, Any

import typer

from services.cli.proxy import Proxy
from services.cli.stack import PROXY_PORT, SERVICES, Stack, kind, scaled_out
from shared.devcluster import Cluster, running_brokers
from shared.images import LocalImageStore, open_image_store
from shared.settings import CommonSettings


def _broker(s: CommonSettings, brokers: int) -> Cluster | None:
    """The local broker or cluster (`make kafka BROKERS=n`) when the bootstrap address is its own; else external."""
    local = Cluster(s.var_dir / "kafka", brokers)
    if s.kafka_bootstrap_servers not in ("127.0.0.1:9092", local.bootstrap) or os.environ.get("PACKLINE_EXTERNAL_KAFKA"):
        return None
    return local


def _run_stack(body: Any, brokers: int | None = None, instances: int = 1) -> int:
    s = CommonSettings()
    brokers = brokers or running_brokers(s.var_dir / "kafka")
    broker = _broker(s, brokers)
    started_broker = False
    if broker is not None and not broker.running():
        typer.echo(f"starting Kafka ({brokers} node(s)) ...", err=True)
        broker.start()
        started_broker = True
    env = {"KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap} if broker is not None else {}
    proxy: Proxy | None = None
    if instances > 1:
        # Behind nginx: one origin for the api and the notifier, whose public URLs are the proxy's.
        services, ports = scaled_out(instances)
        proxy = Proxy(s.var_dir / "nginx", s.var_dir / "logs", int(os.environ.get("PROXY_PORT", PROXY_PORT)),
                      [p for n, p in ports.items() if kind(n) == "api"], [p for n, p in ports.items() if kind(n) == "notifier"])
        for var in ("API_PUBLIC_URL", "NOTIFIER_PUBLIC_URL"):
            env[var] = os.environ.get(var, proxy.url)
        stack = Stack(env, s.var_dir / "logs", services, ports)
    else:
        stack = Stack(env, s.var_dir / "logs", SERVICES)

    def interrupted(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    try:
        stack.start()
        typer.echo(f"starting {', '.join(stack.services)} (logs in {stack.log_dir}) ...", err=True)
        if proxy is not None:
            proxy.start()
            assert proxy.proc is not None
            stack.adopt("nginx", proxy.proc)  # watched and stopped with the services
            proxy.wait_ready()
            typer.echo(f"nginx on {proxy.url} in front of {instances} api and {instances} notifier instances", err=True)
        stack.wait_healthy(120)
        return int(body(stack, s))
    except KeyboardInterrupt:
        return 0
    finally:
        typer.echo("stopping services ...", err=True)
        stack.stop()
        if started_broker and broker is not None:
            broker.stop()
        typer.echo("stopped", err=True)


BrokersOption = Annotated[int | None, typer.Option(
    "--brokers", envvar="PACKLINE_KAFKA_BROKERS", min=1, help="local Kafka nodes (default: as many as run, else 1)",
)]


InstancesOption = Annotated[int, typer.Option(
    "--instances", min=1, help="api and notifier instances; above 1, behind nginx (one origin, PROXY_PORT, default 8080)",
)]


def up(brokers: BrokersOption = None, instances: InstancesOption = 1) -> None:
    """Kafka and the four services in the foreground; Ctrl-C stops them all."""

    def body(stack: Stack, s: CommonSettings) -> int:
        public = stack.env.get("API_PUBLIC_URL", s.api_public_url)
        typer.echo(f"packline is up: web page {public}/  (Ctrl-C stops everything)", err=True)
        return stack.wait()

    raise typer.Exit(_run_stack(body, brokers, instances))


def demo() -> None:
    """Start everything, run one six-image pack end to end, show where the images are, stop."""

    def body(stack: Stack, s: CommonSettings) -> int:
        cli = [sys.executable, "-m", "services.cli"]
        user = f"demo-{uuid.uuid4().hex[:6]}"
        created = subprocess.run([*cli, "accounts", "create", user, "--credits", "20"], check=True, capture_output=True, text=True)
        key = created.stdout.strip().splitlines()[-1]
        typer.echo(f"account {user} created with 20 credits", err=True)
        result = subprocess.run([*cli, "submit", "--name", "Insulated steel water bottle", "--description",
                                 "750 ml, double-walled, powder-coated", "--feature", "keeps drinks cold 24 h",
                                 "--feature", "leak-proof lid", "--style", "clean, bright, outdoor", "--wait",
                                 "--api-key", key], stdout=subprocess.PIPE, text=True)
        pack_id = (result.stdout.strip().splitlines() or ["?"])[0]
        store = open_image_store(s)
        if isinstance(store, LocalImageStore):
            images = sorted(store.path(pack_id, "").glob("*.png"))
            typer.echo(f"\n{len(images)} images in {store.describe(pack_id)}:")
            for path in images:
                typer.echo(f"  {path}")
        else:
            typer.echo(f"\nimages in {store.describe(pack_id)}")
        balance = subprocess.run([*cli, "credits", "balance", user], capture_output=True, text=True)
        typer.echo(balance.stdout.strip())
        return result.returncode

    raise typer.Exit(_run_stack(body))
