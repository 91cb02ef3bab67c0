"""Event models vs. the published schemas, and decoding of whatever arrives on a topic."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import jsonschema
import pytest

from shared import events
from shared.errors import InvalidMessage
from shared.events import APLUS_KINDS, REGISTRY, ImageJob, PackRequested, decode, json_schema

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


@pytest.mark.parametrize("etype", sorted(REGISTRY))
def test_models_and_schemas_do_not_drift(etype: str) -> None:
    model = REGISTRY[etype]
    path = SCHEMAS / f"{model.TYPE}.v{model.VERSION}.json"
    assert path.exists(), f"{path.name} missing: run `make schemas`"
    assert json.loads(path.read_text()) == json_schema(model), f"{path.name} drifted from the model: run `make schemas`"


def test_every_schema_file_has_a_model() -> None:
    """Or is an older version that is still read (it has an upcaster): its publishers may remain."""
    names = {f"{m.TYPE}.v{m.VERSION}.json" for m in REGISTRY.values()} | {f"{t}.v{v}.json" for t, v in events.UPCASTERS}
    assert {p.name for p in SCHEMAS.glob("*.json")} - {"asyncapi.json"} <= names  # that one: tests/unit/test_asyncapi.py


def test_encoded_events_validate_against_their_schema() -> None:
    ev = PackRequested(pack_id=uuid.uuid4(), user_id="alice", product={"name": "Lamp", "features": ["warm"]})
    wire = json.loads(ev.encode())
    jsonschema.validate(wire, json.loads((SCHEMAS / "pack.requested.v2.json").read_text()))
    assert {"event_id", "type", "version", "occurred_at"} <= wire.keys()
    assert "__faust" not in wire
    assert decode(ev.encode()) == ev


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"\xff\x00", "not JSON"),
        (b"[]", "not a JSON object"),
        (b'{"type": "nope", "version": 1}', "unknown event type"),
        (b'{"type": "pack.requested", "version": 7}', "unsupported version"),
        (b'{"type": "pack.requested", "version": 1, "user_id": "a b"}', "fails its schema"),
        (None, "empty"),
    ],
)
def test_bad_messages_raise_invalid_message_with_a_reason(raw: bytes | None, reason: str) -> None:
    with pytest.raises(InvalidMessage, match=reason):
        decode(raw)


def test_a_type_that_does_not_belong_on_the_topic_is_invalid() -> None:
    job = ImageJob(pack_id=uuid.uuid4(), user_id="a", image_id="main", kind="main", prompt="p")
    with pytest.raises(InvalidMessage, match="does not belong"):
        decode(job.encode(), (PackRequested,))


def test_old_versions_are_upcast(monkeypatch: pytest.MonkeyPatch) -> None:
    """A v2 of image.job that renamed `prompt` reads v1 messages through an upcaster."""

    class ImageJobV2(events.Event):
        TYPE = "test.job"
        VERSION = 2
        type: str
        version: int
        text: str

    def v1_to_v2(data: dict) -> dict:  # type: ignore[type-arg]
        data = dict(data)
        data["text"] = data.pop("prompt")
        return data

    monkeypatch.setitem(events.UPCASTERS, ("test.job", 1), v1_to_v2)
    try:
        old = json.dumps({"event_id": "e1", "type": "test.job", "version": 1, "prompt": "hello"}).encode()
        upcast = decode(old)
        assert isinstance(upcast, ImageJobV2) and upcast.text == "hello" and upcast.version == 2
    finally:
        REGISTRY.pop("test.job", None)


@pytest.mark.parametrize("aplus, modules", [(True, list(APLUS_KINDS)), (False, [])])
def test_a_v1_pack_request_reads_aplus_true_as_all_four_modules(aplus: bool, modules: list[str]) -> None:
    v1 = {"type": "pack.requested", "version": 1, "pack_id": str(uuid.uuid4()), "user_id": "alice",
          "product": {"name": "Lamp"}, "aplus": aplus}
    jsonschema.validate(v1, json.loads((SCHEMAS / "pack.requested.v1.json").read_text()))  # what v1 publishers send
    ev = decode(json.dumps(v1).encode(), (PackRequested,))
    assert ev.version == 2 and ev.aplus == modules


def test_a_v1_pack_request_with_a_bad_aplus_is_invalid_not_guessed() -> None:
    v1 = {"type": "pack.requested", "version": 1, "pack_id": str(uuid.uuid4()), "user_id": "alice",
          "product": {"name": "Lamp"}, "aplus": "yes"}
    with pytest.raises(InvalidMessage, match="aplus"):
        decode(json.dumps(v1).encode())
