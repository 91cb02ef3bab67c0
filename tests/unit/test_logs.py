"""LOG_FORMAT: JSON lines with every field of a record, or text with the fields as key=value."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import cast

import pytest

from shared import logs


@pytest.fixture
def captured(capsys: pytest.CaptureFixture[str]) -> Iterator[pytest.CaptureFixture[str]]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield capsys
    root.handlers, root.level = handlers, level


def test_json_lifecycle_line_names_pack_image_user_event_and_trace(captured: pytest.CaptureFixture[str]) -> None:
    logs.configure_logging("json")
    logs.lifecycle("refunded", pack_id="p1", image_id="main", user_id="u1", event_id="e1", amount=2)
    line = json.loads(captured.readouterr().err.strip())
    assert line["logger"] == "packline.lifecycle" and line["level"] == "INFO"
    assert {k: line[k] for k in ("step", "pack_id", "image_id", "user_id", "event_id", "amount", "trace_id")} == {
        "step": "refunded", "pack_id": "p1", "image_id": "main", "user_id": "u1", "event_id": "e1", "amount": 2,
        "trace_id": "",
    }


def test_context_provider_is_the_one_place_for_trace_ids(captured: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs, "context_provider", logs.context_provider)  # put back afterwards
    logs.set_context_provider(lambda: {"trace_id": "abc123"})
    logs.configure_logging("json")
    logging.getLogger("packline.any").warning("hello %s", "world")
    line = json.loads(captured.readouterr().err.strip())
    assert line["message"] == "hello world" and line["trace_id"] == "abc123"


def test_uvicorn_access_lines_are_structured(captured: pytest.CaptureFixture[str]) -> None:
    logs.configure_logging("json")
    logging.getLogger("uvicorn.access").info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5", "GET", "/healthz", "1.1", 200)
    line = json.loads(captured.readouterr().err.strip())
    assert (line["method"], line["path"], line["status"]) == ("GET", "/healthz", 200)


def test_text_keeps_the_classic_line_and_adds_fields(captured: pytest.CaptureFixture[str]) -> None:
    logs.configure_logging("text")
    logs.lifecycle("debited", pack_id="p1", user_id="u1", event_id="e1")
    err = captured.readouterr().err.strip()
    assert " INFO packline.lifecycle: debited pack p1 step=debited pack_id=p1 user_id=u1 event_id=e1" in err
    assert "image_id" not in err and "trace_id" not in err  # empty fields are left out


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="json or text"):
        logs.configure_logging(cast(logs.LogFormat, "yaml"))
