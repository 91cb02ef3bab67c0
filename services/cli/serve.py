"""`packline serve SERVICE`: one service in the foreground."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Annotated

import typer

from services.cli.common import create_topics
from shared.settings import CommonSettings

if TYPE_CHECKING:
    from fastapi import FastAPI

SERVICES = ("api", "notifier", "credits", "generation")


def serve(service: Annotated[str, typer.Argument(help="api | notifier | credits | generation")]) -> None:
    """Run one service in the foreground."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if service not in SERVICES:
        raise typer.BadParameter(f"unknown service {service!r}; choose one of {', '.join(SERVICES)}")
    create_topics(CommonSettings())  # also the check that the cluster takes our settings: exit 2 if not
    # Imported here, like each service below: the other commands start without them.
    import uvicorn

    if service == "api":
        from services.api.app import create_app
        from services.api.settings import Settings as ApiSettings

        s = ApiSettings()
        uvicorn.run(create_app(s), host=s.api_host, port=s.api_port, loop="uvloop", http="httptools", log_level="warning")
    elif service == "notifier":
        from services.notifier.app import create_app as create_notifier
        from services.notifier.settings import Settings as NotifierSettings

        n = NotifierSettings()
        uvicorn.run(create_notifier(n), host=n.notifier_host, port=n.notifier_port, loop="uvloop", http="httptools",
                    log_level="warning", timeout_graceful_shutdown=3)
    else:
        worker, port = _worker(service)
        # The grace covers open /metrics requests; the workers' own stop (images in flight) is not cut short.
        uvicorn.run(worker, host="127.0.0.1", port=port, loop="uvloop", log_level="warning", timeout_graceful_shutdown=3)


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
