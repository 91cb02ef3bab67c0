"""`packline serve SERVICE`: one service in the foreground."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Annotated, Any

import typer

from services.cli.common import create_topics
from shared import tracing
from shared.logs import configure_logging
from shared.settings import CommonSettings

if TYPE_CHECKING:
    from fastapi import FastAPI

SERVICES = ("api", "notifier", "credits", "generation")
# uvicorn logs through `configure_logging` (same format, access lines included), not its own config.
UVICORN_LOGS: dict[str, Any] = {"log_config": None, "log_level": None, "access_log": True}


def serve(service: Annotated[str, typer.Argument(help="api | notifier | credits | generation")]) -> None:
    """Run one service in the foreground."""
    if service not in SERVICES:
        raise typer.BadParameter(f"unknown service {service!r}; choose one of {', '.join(SERVICES)}")
    common = CommonSettings()
    if common.process_nice:
        os.nice(common.process_nice)
    configure_logging(common.log_format)
    create_topics(common)  # also the check that the cluster takes our settings: exit 2 if not
    tracing.configure(service)  # only when OTEL_* variables ask for an exporter
    # Imported here, like each service below: the other commands start without them.
    import uvicorn

    if service == "api":
        from services.api.app import create_app
        from services.api.settings import Settings as ApiSettings

        s = ApiSettings()
        uvicorn.run(create_app(s), host=s.api_host, port=s.api_port, loop="uvloop", http="httptools", **UVICORN_LOGS)
    elif service == "notifier":
        from services.notifier.app import create_app as create_notifier
        from services.notifier.settings import Settings as NotifierSettings

        n = NotifierSettings()
        uvicorn.run(create_notifier(n), host=n.notifier_host, port=n.notifier_port, loop="uvloop", http="httptools",
                    timeout_graceful_shutdown=3, **UVICORN_LOGS)
    else:
        worker, port = _worker(service)
        # The grace covers open /metrics requests; the workers' own stop (images in flight) is not cut short.
        uvicorn.run(worker, host=common.metrics_host, port=port, loop="uvloop", timeout_graceful_shutdown=3, **UVICORN_LOGS)


def _worker(service: str) -> tuple[FastAPI, int]:
    """The ASGI app (health and metrics around the consumer) of a Kafka worker, and its port."""
    if service == "credits":
        from services.credits.app import build
        from services.credits.settings import Settings as CreditsSettings

        c = CreditsSettings()
        return build(c), c.credits_port
    from services.generation.app import build as build_generation
    from services.generation.settings import Settings as GenerationSettings

    g = GenerationSettings()
    return build_generation(g), g.generation_port
