"""schemas/asyncapi.json vs. the topic registry and the event models, its headers vs. the
code that writes them, and the document checked by the official AsyncAPI parser."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from shared import asyncapi
from shared.events import PackRequested, json_schema
from shared.kafka import failure_headers, invalid_message
from shared.topics import PACKS_REQUESTED, REGISTRY, Topics

ROOT = Path(__file__).resolve().parents[2]
FILE = ROOT / "schemas" / asyncapi.FILE
PARSER = ROOT / ".cache" / "asyncapi-node"
VALIDATE = ROOT / "tests" / "asyncapi_validate.mjs"


def committed() -> dict[str, Any]:
    assert FILE.exists(), f"{FILE.name} missing: run `make schemas`"
    doc: dict[str, Any] = json.loads(FILE.read_text())
    return doc


def test_the_document_and_the_registry_do_not_drift() -> None:
    assert committed() == json.loads(asyncapi.render(asyncapi.document())), f"{FILE.name} drifted from the registry: run `make schemas`"


def test_a_changed_model_changes_the_document() -> None:
    """What the drift test relies on: a field added to an event reaches its payload schema."""

    class Changed(PackRequested):  # no TYPE of its own: not registered as an event type
        priority: int = 0

    registry = [dataclasses.replace(PACKS_REQUESTED, events=(Changed,)) if s is PACKS_REQUESTED else s for s in REGISTRY]
    changed = asyncapi.document(registry)
    sid = f"{PackRequested.TYPE}.v{PackRequested.VERSION}"
    assert changed != committed()
    assert "priority" in changed["components"]["schemas"][sid]["properties"]
    assert "priority" not in committed()["components"]["schemas"][sid]["properties"]


def test_every_topic_is_a_channel_with_its_key_and_event_schemas() -> None:
    doc = committed()
    schemas = doc["components"]["schemas"]
    by_address = {c["address"]: c for c in doc["channels"].values()}
    assert set(by_address) == {spec.name for spec in REGISTRY}
    for spec in REGISTRY:
        channel = by_address[spec.name]
        messages = {m["name"]: m for m in channel["messages"].values()}
        assert set(messages) == ({m.TYPE for m in spec.events} or {"raw"})
        for model in spec.events:
            message = messages[model.TYPE]
            assert message["bindings"]["kafka"]["key"]["description"] == spec.key
            schema = schemas[message["payload"]["$ref"].removeprefix("#/components/schemas/")]
            exported = json_schema(model)
            assert schema["properties"].keys() == exported["properties"].keys()
            assert schema.get("required") == exported.get("required")
    # The payload of pack.requested is its schemas/ file (json_schema), refs moved to the components.
    def moved(schema: Any) -> Any:
        return json.loads(json.dumps(schema).replace('"#/$defs/', '"#/components/schemas/'))

    exported = json_schema(PackRequested)
    sid = f"{PackRequested.TYPE}.v{PackRequested.VERSION}"
    assert schemas[sid] == moved({k: v for k, v in exported.items() if k not in ("$schema", "$id", "$defs")})
    for name, definition in exported["$defs"].items():
        assert schemas[name] == moved(definition)


def header_names(doc: dict[str, Any], trait: str) -> tuple[set[str], set[str]]:
    """(every header, the required ones) a message trait describes."""
    names: set[str] = set()
    required: set[str] = set()
    for part in doc["components"]["messageTraits"][trait]["headers"]["allOf"]:
        schema = doc["components"]["schemas"][part["$ref"].removeprefix("#/components/schemas/")]
        names |= schema["properties"].keys()
        required |= set(schema.get("required", ()))
    return names, required


def test_headers_match_what_the_code_writes() -> None:
    doc = committed()
    dead = failure_headers(attempts=2, error="boom", error_type="TransientImageError", original_topic="images.jobs",
                           first_failed_at_ms=1)
    names, required = header_names(doc, "deadLettered")
    assert {k for k, _ in dead} == required and required <= names
    assert {"traceparent", "tracestate"} <= names and not {"traceparent", "tracestate"} & required

    invalid = invalid_message(Topics(), topic="packs.requested", partition=1, offset=7, key=b"k", value=b"{",
                              reason="not JSON", headers=[("a", b"b")], bad_header="a")
    names, required = header_names(doc, "invalid")
    assert {k for k, _ in invalid.headers} - {"traceparent", "tracestate"} <= names
    assert required <= {k for k, _ in invalid.headers}

    retry_names, retry_required = header_names(doc, "retried")
    assert {"x-due-at", *required - {"x-original-offset", "x-original-partition"}} <= retry_required
    channel = next(c for c in doc["channels"].values() if c["address"] == "images.retry.5s")
    assert channel["messages"]["image_job"]["traits"] == [{"$ref": "#/components/messageTraits/retried"}]
    assert "x-due-at" in retry_names


def validate(*paths: Path) -> tuple[int, dict[str, dict[str, Any]]]:
    """The parser's exit code, and its verdict per document."""
    node = shutil.which("node")
    assert node, "Node.js is not installed (make system-deps installs it)"
    assert (PARSER / "node_modules" / "@asyncapi" / "parser").is_dir(), "the AsyncAPI parser is missing: run `make asyncapi-parser`"
    out = subprocess.run([node, str(VALIDATE), str(PARSER), *map(str, paths)], capture_output=True, text=True, timeout=300)
    assert out.returncode in (0, 1), out.stdout + out.stderr
    verdicts = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    return out.returncode, {Path(v["file"]).name: v for v in verdicts}


def test_the_asyncapi_parser_accepts_the_document() -> None:
    code, verdicts = validate(FILE)
    errors = [d for d in verdicts[FILE.name]["diagnostics"] if d["severity"] == "error"]
    assert code == 0 and verdicts[FILE.name]["valid"] and not errors, verdicts


def test_the_parser_reports_broken_documents(tmp_path: Path) -> None:
    broken: dict[str, Any] = {}
    doc = committed()
    doc["channels"]["packs_requested"]["messages"]["pack_requested"]["payload"] = {"$ref": "#/components/schemas/nope"}
    broken["dangling-ref.json"] = doc
    doc = committed()
    doc["operations"]["receive_packs_requested"]["action"] = "publish"
    broken["bad-action.json"] = doc
    doc = committed()
    del doc["info"]
    broken["no-info.json"] = doc
    for name, content in broken.items():
        (tmp_path / name).write_text(json.dumps(content))
    code, verdicts = validate(*(tmp_path / name for name in broken))
    assert code == 1
    for name in broken:
        assert not verdicts[name]["valid"] and any(d["severity"] == "error" for d in verdicts[name]["diagnostics"]), verdicts[name]
