"""`packline submit` and `packline watch`: a pack's progress live in the terminal."""

from __future__ import annotations

import asyncio
import os
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from services.cli import sse
from shared.auth import make_api_key
from shared.events import APLUS_KINDS, LISTING_KINDS
from shared.settings import CommonSettings

console = Console(stderr=True)
EXIT_CODES = {"COMPLETED": 0, "PARTIAL": 2, "FAILED": 1, "REJECTED": 1, "CANCELLED": 3}


def _api_key(api_key: str | None, user: str | None) -> str:
    if api_key:
        return api_key
    if os.environ.get("PACKLINE_API_KEY"):
        return os.environ["PACKLINE_API_KEY"]
    if user:  # operators hold the secret, so they may act as a user
        return make_api_key(CommonSettings().packline_secret, user)
    raise typer.BadParameter("give --api-key, set PACKLINE_API_KEY, or --user")


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


ApiKey = Annotated[str | None, typer.Option("--api-key", help="API key (or PACKLINE_API_KEY)")]
User = Annotated[str | None, typer.Option("--user", help="act as this user (needs the secret)")]


def submit(
    name: Annotated[str, typer.Option("--name")],
    description: str = "",
    feature: Annotated[list[str] | None, typer.Option("--feature")] = None,
    style: str | None = None,
    images: Annotated[list[str] | None, typer.Option("--images", help=f"kinds: {', '.join(LISTING_KINDS)}")] = None,
    aplus: Annotated[bool, typer.Option(help="all four A+ modules")] = False,
    aplus_module: Annotated[list[str] | None, typer.Option("--aplus-module", help=f"one A+ module: {', '.join(APLUS_KINDS)}")] = None,
    wait: bool = False,
    idempotency_key: str | None = None,
    api_key: ApiKey = None,
    user: User = None,
) -> None:
    """Request a pack; with --wait, follow it live and exit non-zero unless it completes."""
    s = CommonSettings()
    key = _api_key(api_key, user)
    body: dict[str, Any] = {
        "product": {"name": name, "description": description, "features": feature or [], "style": style},
        "images": images or None, "aplus": aplus_module or aplus,
    }
    headers = _bearer(key)
    if idempotency_key:
        headers["Idempotency-Key"] = idempotency_key
    response = httpx.post(f"{s.api_public_url.rstrip('/')}/v1/packs", json=body, headers=headers, timeout=30)
    if response.status_code != 202:
        console.print(f"[red]{response.status_code}[/red] {response.text}")
        raise typer.Exit(1)
    accepted = response.json()
    console.print(f"pack {accepted['pack_id']} accepted, cost {accepted['cost']} credits")
    typer.echo(accepted["pack_id"])
    if wait:
        raise typer.Exit(asyncio.run(_watch(accepted["stream_url"], _bearer(key), from_start=True)))


def watch(pack_id: str, api_key: ApiKey = None, user: User = None) -> None:
    """Follow a pack live: a progress bar, a line per image; exit code 0 COMPLETED,
    2 PARTIAL, 1 FAILED or REJECTED."""
    s = CommonSettings()
    url = f"{s.notifier_public_url.rstrip('/')}/v1/packs/{pack_id}/events"
    raise typer.Exit(asyncio.run(_watch(url, _bearer(_api_key(api_key, user)))))


def cancel(pack_id: str, api_key: ApiKey = None, user: User = None) -> None:
    """Stop a pack: what is not delivered yet is never made, and refunded."""
    _change(pack_id, "cancel", None, _api_key(api_key, user))


def regenerate(
    pack_id: str,
    image: Annotated[list[str] | None, typer.Option("--image", help="a failed image to make again (default: all)")] = None,
    wait: bool = False, api_key: ApiKey = None, user: User = None,
) -> None:
    """Make a PARTIAL or FAILED pack's failed images again; with --wait, follow the new run."""
    key = _api_key(api_key, user)
    accepted = _change(pack_id, "regenerate", {"images": image} if image else None, key)
    if wait:
        raise typer.Exit(asyncio.run(_watch(accepted["stream_url"], _bearer(key))))


def _change(pack_id: str, action: str, body: dict[str, Any] | None, key: str) -> dict[str, Any]:
    url = f"{CommonSettings().api_public_url.rstrip('/')}/v1/packs/{pack_id}/{action}"
    response = httpx.post(url, json=body, headers=_bearer(key), timeout=30)
    if response.status_code != 202:
        console.print(f"[red]{response.status_code}[/red] {response.json().get('detail', response.text)}")
        raise typer.Exit(1)
    accepted: dict[str, Any] = response.json()
    run = f" (run {accepted['run']})" if accepted.get("run") is not None else ""
    console.print(f"pack {pack_id}: {accepted['status']}{run}")
    return accepted


async def _watch(url: str, headers: dict[str, str], from_start: bool = False) -> int:
    status, money = "DRAFT", ""
    images: dict[str, dict[str, Any]] = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=console) as progress:
        bar = progress.add_task("DRAFT", total=None)
        try:
            async for ev in sse.follow(url, headers, last_event_id="0" if from_start else None):
                data = ev.json()
                if ev.event == "pack":
                    status = data["status"]
                    money = f"cost {data['cost']} charged {data['charged']} refunded {data['refunded']}"
                    for img in data.get("images") or ():
                        images[img["image_id"]] = img
                elif ev.event == "image":
                    before = images.get(data["image_id"], {}).get("status")
                    images[data["image_id"]] = data
                    if data["status"] != before:
                        progress.console.print(_image_line(data))
                done = sum(i["status"] in ("COMPLETED", "FAILED", "CANCELLED") for i in images.values())
                progress.update(bar, description=f"{status} {money}", total=len(images) or None, completed=done)
        except httpx.HTTPStatusError as exc:
            console.print(f"[red]{exc}[/red]")
            return 1
    console.print(f"pack {status} {money}")
    for img in images.values():
        if img.get("url"):
            console.print(f"  {img['image_id']}: {img['url']}")
    return EXIT_CODES.get(status, 1)


def _image_line(img: dict[str, Any]) -> str:
    extra = ""
    if img["status"] == "RETRYING":
        extra = f" (attempt {img['attempts']} failed: {img.get('error')}; next try {img.get('next_attempt_at')})"
    elif img["status"] == "FAILED":
        extra = f" ({img.get('error')})"
    elif img["status"] == "COMPLETED":
        extra = f" {img.get('url')}"
    return f"  {img['image_id']:<18} {img['status']}{extra}"
