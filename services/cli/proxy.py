"""nginx in front of several api and notifier instances (`packline up --instances N`, the
scaled-out e2e test): renders deploy/nginx/ for the instances' ports and runs nginx as a
plain child process (`daemon off`, its pid file and temp dirs under its own prefix), not
as the system's service."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

TEMPLATE_DIR = Path(__file__).resolve().parents[2] / "deploy" / "nginx"
NGINX = os.environ.get("PACKLINE_NGINX", "nginx")


def nginx_binary() -> str | None:
    """The nginx executable (PACKLINE_NGINX, else `nginx` on PATH or in /usr/sbin)."""
    return shutil.which(NGINX) or shutil.which(NGINX, path="/usr/sbin:/usr/local/sbin")


def servers(ports: Sequence[int]) -> str:
    return "\n".join(f"        server 127.0.0.1:{port} max_fails=1 fail_timeout=5s;" for port in ports)


def render(prefix: Path, log_dir: Path, listen: int, api_ports: Sequence[int], notifier_ports: Sequence[int]) -> Path:
    """Write `prefix/nginx.conf` (and the SSE location settings it includes) for these ports."""
    prefix.mkdir(parents=True, exist_ok=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    text = (TEMPLATE_DIR / "packline.conf.template").read_text()
    for name, value in {
        "PREFIX": str(prefix), "LOG_DIR": str(log_dir), "LISTEN": f"127.0.0.1:{listen}",
        "API_SERVERS": servers(api_ports), "NOTIFIER_SERVERS": servers(notifier_ports),
    }.items():
        text = text.replace(f"@{name}@", value)
    if left := re.findall(r"@[A-Z_]+@", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))):
        raise RuntimeError(f"unrendered placeholders left in the nginx template: {left}")
    conf = prefix / "nginx.conf"
    conf.write_text(text)
    shutil.copyfile(TEMPLATE_DIR / "sse.conf", prefix / "sse.conf")
    return conf


class Proxy:
    """One nginx process for a stack's instances; `url` is the deployment's public URL."""

    def __init__(self, prefix: Path, log_dir: Path, port: int, api_ports: Sequence[int], notifier_ports: Sequence[int]) -> None:
        self.prefix, self.log_dir, self.port = prefix, log_dir, port
        self.api_ports, self.notifier_ports = list(api_ports), list(notifier_ports)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        binary = nginx_binary()
        if binary is None:
            raise RuntimeError("nginx not found: install it (Debian: apt-get install -y nginx) or set PACKLINE_NGINX")
        conf = render(self.prefix, self.log_dir, self.port, self.api_ports, self.notifier_ports)
        log = open(self.log_dir / "nginx.log", "ab")
        # -e: the error log used before the configuration is read (the compiled-in one may not be writable).
        self.proc = subprocess.Popen(
            [binary, "-c", str(conf), "-p", f"{self.prefix}/", "-e", str(self.log_dir / "nginx-error.log")],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until the proxy answers (any status: the instances behind it have their own health checks)."""
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                log = (self.log_dir / "nginx-error.log")
                raise RuntimeError(f"nginx exited with {self.proc.returncode}: {log.read_text() if log.exists() else ''}")
            try:
                httpx.get(f"{self.url}/healthz", timeout=2)
                return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"nginx not answering on {self.url} after {timeout:.0f}s")
            time.sleep(0.1)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)  # fast shutdown: open streams are cut (clients resume elsewhere)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
