"""`packline schemas`: the event JSON schemas, written from the event models."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from shared.events import REGISTRY, json_schema
from shared.settings import ROOT

app = typer.Typer(no_args_is_help=True, help="event JSON schemas")


@app.command("export")
def schemas_export(out: Path = ROOT / "schemas") -> None:
    """Write schemas/<type>.v<version>.json from the event models."""
    out.mkdir(parents=True, exist_ok=True)
    for model in REGISTRY.values():
        path = out / f"{model.TYPE}.v{model.VERSION}.json"
        path.write_text(json.dumps(json_schema(model), indent=2, sort_keys=True) + "\n")
    typer.echo(f"wrote {len(REGISTRY)} schemas to {out}")
