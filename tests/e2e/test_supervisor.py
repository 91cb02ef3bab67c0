"""The process supervisor (`packline up`, the demo, every end-to-end test) counts an
instance healthy only when its own process answers: a port another process already holds
is reported, not mistaken for the service."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from services.cli.stack import PortTaken, Stack
from shared.devbroker import free_port
from tests.harness import FAST_BACKEND


class _Stranger(BaseHTTPRequestHandler):
    """Another process's service: healthy, but not ours."""

    def do_GET(self) -> None:
        body = json.dumps({"status": "ok", "service": "api", "pid": 1}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def stranger_port() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stranger)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_a_port_held_by_another_process_is_reported_not_taken_for_the_service(
    kafka_bootstrap: str, tmp_path: Path, stranger_port: int,
) -> None:
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "TOPIC_PREFIX": f"t{uuid.uuid4().hex[:10]}.",
        "PACKLINE_SECRET": uuid.uuid4().hex, "VAR_DIR": str(tmp_path), "TOPIC_PARTITIONS": "1",
        "API_PORT": str(stranger_port), "NOTIFIER_PORT": str(free_port()), **FAST_BACKEND,
    }
    stack = Stack(env, tmp_path / "logs", ("api",))
    stack.start()
    try:
        with pytest.raises(PortTaken, match="api exited"):
            stack.wait_healthy(90)
    finally:
        stack.stop()
