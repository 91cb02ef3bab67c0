"""clients/python installed on its own into a fresh virtualenv (no server dependency), then
driving packs end to end against the four service processes: over HTTP, over Kafka, and the
owner's cancel and regenerate. Also the api's /asyncapi.json."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared import asyncapi
from shared.events import PackRequested, decode
from tests.harness import RunningStack

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("client_package_run.py")
PIP_CACHE = ROOT / ".cache" / "pip"
IMAGES = ["main", "lifestyle", "detail"]


@pytest.fixture(scope="module")
def client_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The python of a new virtualenv with `pip install clients/python` and nothing else."""
    tmp = tmp_path_factory.mktemp("client")
    # Installed from a copy: a build writes build/ and *.egg-info next to the sources.
    src = shutil.copytree(ROOT / "clients" / "python", tmp / "src", ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "venv", str(tmp / "venv")], check=True, timeout=120)
    python = tmp / "venv" / "bin" / "python"
    out = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--cache-dir", str(PIP_CACHE),
                          str(src)], capture_output=True, text=True, timeout=600, cwd=tmp)
    assert out.returncode == 0, out.stdout + out.stderr
    return python


@pytest.fixture(scope="module")
def slow_stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    """Images take 1.5 s (a cancel sent right after the 202 comes before they are made), and
    `scale` always fails for good (a PARTIAL pack to regenerate)."""
    with RunningStack.started(kafka_bootstrap, tmp_path_factory.mktemp("stack"), LOCAL_IMAGE_LATENCY_MS="1500",
                              LOCAL_IMAGE_PERMANENT_FAIL_KINDS="scale") as running:
        yield running


async def run(python: Path, scenario: str, config: dict[str, Any]) -> dict[str, Any]:
    out = await asyncio.to_thread(subprocess.run, [str(python), str(SCRIPT), scenario, json.dumps(config)],
                                  capture_output=True, text=True, timeout=240, cwd=python.parent)
    assert out.returncode == 0, out.stdout + out.stderr
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def config(stack: RunningStack, user: str, **extra: Any) -> dict[str, Any]:
    return {"api": stack.api, "notifier": stack.notifier, "key": stack.key(user), "user": user, "bootstrap": stack.bootstrap,
            "prefix": stack.topics.prefix, "images": IMAGES, **extra}


def test_the_package_installs_alone_without_the_server(client_python: Path) -> None:
    probe = ("import importlib.util, json, packline_client\n"
             "print(json.dumps({m: importlib.util.find_spec(m) is not None for m in "
             "['packline_client', 'httpx', 'aiokafka', 'fastapi', 'sqlalchemy', 'openai', 'pydantic', 'shared', 'services']}))")
    out = subprocess.run([str(client_python), "-c", probe], capture_output=True, text=True, timeout=60, cwd=client_python.parent)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"packline_client": True, "httpx": True, "aiokafka": True, "fastapi": False,
                                      "sqlalchemy": False, "openai": False, "pydantic": False, "shared": False, "services": False}
    typed = client_python.parent.parent / "lib"
    assert list(typed.glob("python3*/site-packages/packline_client/py.typed")), "py.typed is not installed"


async def test_a_pack_over_http_submitted_and_followed(client_python: Path, slow_stack: RunningStack) -> None:
    user = await slow_stack.create_user(credits=10)
    result = await run(client_python, "http", config(slow_stack, user))
    assert result["again"] == result["pack_id"] and result["cost"] == 3 and result["conflict"] == 409
    live = result["live"]
    assert live[0]["event"] == "pack" and live[-1] == {**live[-1], "event": "pack", "status": "COMPLETED"}
    completed = {e["image_id"] for e in live if e["event"] == "image" and e["status"] == "COMPLETED"}
    assert completed == set(IMAGES)
    replay = result["replay"]
    ids = [int(e["id"]) for e in replay]
    assert ids == sorted(set(ids)) and replay[-1]["status"] == "COMPLETED"
    assert [e["id"] for e in result["resumed"]] == [e["id"] for e in replay[3:]]  # no gap, no duplicate
    assert result["by_token"] == [live[-1]]
    assert result["snapshot"] == {"status": "COMPLETED", "charged": 3, "terminal": True}
    assert await slow_stack.balance(user) == 7  # charged once for two submits with one key


async def test_a_pack_published_to_kafka_and_followed(client_python: Path, slow_stack: RunningStack) -> None:
    user = await slow_stack.create_user(credits=5)
    result = await run(client_python, "kafka", config(slow_stack, user, images=["main", "detail"]))
    live = result["live"]
    assert live[-1]["event"] == "pack" and live[-1]["status"] == "COMPLETED", live
    assert {e["image_id"] for e in live if e["event"] == "image" and e["status"] == "COMPLETED"} == {"main", "detail"}
    records = [r for r in await slow_stack.records(slow_stack.topics.packs_requested) if r.key == user.encode()]
    assert len(records) == 1
    event = decode(records[0].value)
    assert isinstance(event, PackRequested) and str(event.pack_id) == result["pack_id"]
    assert event.source == "client-package-test" and event.images == ["main", "detail"]
    assert await slow_stack.balance(user) == 3


class CuttingProxy:
    """A TCP proxy in front of the notifier that cuts its first connection once two SSE events
    have gone through (mid-stream, like a dropped network), and passes later ones whole.
    It keeps the request head of each connection."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = len(self.requests)
        self.requests.append(b"")
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)

        async def requests() -> None:
            while data := await reader.read(65536):
                self.requests[number] += data
                up_writer.write(data)
                await up_writer.drain()

        async def responses() -> None:
            seen = b""
            while data := await up_reader.read(65536):
                seen += data
                writer.write(data)
                await writer.drain()
                if number == 0 and seen.count(b"id: ") >= 2:
                    return  # the cut

        pump = asyncio.create_task(requests())
        try:
            await responses()
        finally:
            pump.cancel()
            writer.close()
            up_writer.close()


async def test_a_dropped_stream_is_resumed_without_gap_or_duplicate(client_python: Path, slow_stack: RunningStack) -> None:
    user = await slow_stack.create_user(credits=10)
    posted = await slow_stack.post_pack(user, {"product": {"name": "Desk lamp"}, "images": IMAGES})
    assert posted.status_code == 202, posted.text
    pack_id = posted.json()["pack_id"]
    proxy = CuttingProxy(int(slow_stack.env["NOTIFIER_PORT"]))
    async with proxy as url:
        result = await run(client_python, "follow", {**config(slow_stack, user), "notifier": url, "pack_id": pack_id})
    followed = [e["id"] for e in result["events"]]
    everything = [e.id for e in await slow_stack.events(pack_id, user)]
    assert followed == everything and result["events"][-1]["status"] == "COMPLETED"
    assert len(proxy.requests) >= 2, "the first connection was not cut"
    heads = [r.split(b"\r\n\r\n")[0].decode().lower().split("\r\n") for r in proxy.requests]
    resumed = [[line.split(":", 1)[1].strip() for line in head if line.startswith("last-event-id:")] for head in heads]
    assert resumed[0] == ["0"] and resumed[1][0] in followed  # the second connection went on after an event it had


async def test_cancel_and_regenerate(client_python: Path, slow_stack: RunningStack) -> None:
    user = await slow_stack.create_user(credits=20)
    result = await run(client_python, "changes", config(slow_stack, user, partial_images=["main", "scale"], regenerate=["scale"]))
    assert result["cancelled"] == "CANCELLED"
    assert result["cancel_events"][-1]["event"] == "pack" and result["cancel_events"][-1]["status"] == "CANCELLED"
    assert result["first_run"][-1]["status"] == "PARTIAL"
    assert result["regenerated"]["status"] == "PROCESSING" and result["regenerated"]["run"] == 1
    second = result["second_run"]
    assert second[-1]["event"] == "pack" and second[-1]["status"] == "PARTIAL"  # scale fails for good again
    assert any(e["event"] == "image" and e["image_id"] == "scale" and e["status"] == "GENERATING" for e in second)


async def test_the_api_serves_the_asyncapi_document(slow_stack: RunningStack) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.get(f"{slow_stack.api}/asyncapi.json")  # no key, like /openapi.json
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/json")
    assert response.json() == json.loads((ROOT / "schemas" / asyncapi.FILE).read_text()) == json.loads(asyncapi.render(asyncapi.document()))
