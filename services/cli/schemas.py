"""`packline schemas`: the event JSON schemas and the AsyncAPI document of the topics,
written from the event models and the topic registry."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from shared import asyncapi
from shared.events import REGISTRY, json_schema
from shared.settings import ROOT

app = typer.Typer(no_args_is_help=True, help="event JSON schemas and the AsyncAPI document")


@app.command("export")
def schemas_export(out: Path = ROOT / "schemas") -> None:
    """Write schemas/<type>.v<version>.json from the event models, and schemas/asyncapi.json
    (every topic, its key, messages and headers) from the topic registry."""
    out.mkdir(parents=True, exist_ok=True)
    for model in REGISTRY.values():
        path = out / f"{model.TYPE}.v{model.VERSION}.json"
        path.write_text(json.dumps(json_schema(model), indent=2, sort_keys=True) + "\n")
    (out / asyncapi.FILE).write_text(asyncapi.render(asyncapi.document()))
    typer.echo(f"wrote {len(REGISTRY)} schemas and {asyncapi.FILE} to {out}")
