"""Logging of every service: one configuration (`configure_logging`, text or JSON lines on
stderr, uvicorn's own and access logs included), and the lifecycle lines of a pack
(`lifecycle`), each naming its pack, image, user and event.

Context that belongs to every line (a trace id) is attached in one place: `ContextFilter`,
which asks `context_provider` for it. Until tracing sets that provider, `trace_id` is empty.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

LogFormat = Literal["json", "text"]
LIFECYCLE = logging.getLogger("packline.lifecycle")
# accepted, debited, job started, finished, failed, retried, dead-lettered, refunded, settled, replayed
Step = Literal[
    "accepted", "debited", "job_started", "finished", "failed", "retried", "dead_lettered", "refunded", "settled",
    "replayed",
]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# What a LogRecord has before any `extra`: everything else on a record is a field of its own.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime", "taskName"}


def _no_context() -> dict[str, str]:
    return {"trace_id": ""}


# Returns the fields every line carries (at least `trace_id`); tracing replaces it.
context_provider: Callable[[], dict[str, str]] = _no_context


def set_context_provider(provider: Callable[[], dict[str, str]]) -> None:
    """Where tracing plugs in: `provider` is called for every log record (keep it cheap)."""
    global context_provider
    context_provider = provider


class ContextFilter(logging.Filter):
    """Adds `context_provider()`'s fields to every record that does not carry them already."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in context_provider().items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = {k: v for k, v in record.__dict__.items() if k not in _STANDARD}
    if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
        client, method, path, http_version, status = record.args
        fields |= {"client": client, "method": method, "path": path, "http_version": http_version, "status": status}
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and every field of the record."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name, "message": record.getMessage(), **_fields(record),
        }
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    """The classic line, followed by the record's fields as key=value (empty ones left out)."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = {k: v for k, v in _fields(record).items() if v not in ("", None) and record.name != "uvicorn.access"}
        if not fields:
            return text
        first, sep, rest = text.partition("\n")  # a traceback stays below the fields
        return first + " " + " ".join(f"{k}={v}" for k, v in fields.items()) + sep + rest


def configure_logging(fmt: LogFormat = "text", level: int = logging.INFO) -> None:
    """The logging of a packline process (idempotent): one handler on the root logger, in
    `fmt`; uvicorn's loggers go through it (errors from WARNING, access lines at INFO)."""
    if fmt not in ("json", "text"):
        raise ValueError(f"LOG_FORMAT: json or text, not {fmt!r}")
    # Nothing here prints a record's caller (file, function, line), thread or process, and
    # finding them costs every record a walk up the stack: a line per request adds up.
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)
    for name, uv_level in (("uvicorn", logging.WARNING), ("uvicorn.error", logging.WARNING),
                           ("uvicorn.access", logging.INFO), ("uvicorn.asgi", logging.WARNING)):
        logger = logging.getLogger(name)
        logger.handlers, logger.propagate = [], True
        logger.setLevel(uv_level)


def lifecycle(
    step: Step, *, pack_id: object, user_id: str, event_id: str, image_id: str | None = None, **more: Any,
) -> None:
    """One line for one step of a pack's life. Redelivered messages log their step again."""
    if not LIFECYCLE.isEnabledFor(logging.INFO):
        return  # nothing built for a line that is not written
    fields = {"step": step, "pack_id": str(pack_id), "image_id": image_id or "", "user_id": user_id,
              "event_id": event_id, **more}
    LIFECYCLE.info("%s pack %s%s", step, pack_id, f" image {image_id}" if image_id else "", extra=fields)
