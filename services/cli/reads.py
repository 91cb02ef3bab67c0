"""`packline packs list` and `packline credits statement`: a user's packs and balance
changes, read from the notifier over HTTP (as a browser would), page by page."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

import httpx
import typer

from services.cli.packs import ApiKey, User, _api_key, _bearer
from shared.settings import CommonSettings

app = typer.Typer(no_args_is_help=True, help="your packs")
Limit = Annotated[int, typer.Option("--limit", min=1, max=100, help="per page")]
Cursor = Annotated[str | None, typer.Option("--cursor", help="next_cursor of an earlier page")]
All = Annotated[bool, typer.Option("--all", help="every page, not only the first")]


def pages(path: str, key: str, params: dict[str, Any], everything: bool) -> Iterator[dict[str, Any]]:
    """Each page the notifier answers; exit 1 on an error answer."""
    url = f"{CommonSettings().notifier_public_url.rstrip('/')}{path}"
    with httpx.Client(timeout=30, headers=_bearer(key)) as client:
        while True:
            response = client.get(url, params={k: v for k, v in params.items() if v is not None})
            if response.status_code != 200:
                typer.echo(f"{response.status_code} {response.text}", err=True)
                raise typer.Exit(1)
            body: dict[str, Any] = response.json()
            yield body
            if not everything or not body.get("next_cursor"):
                if body.get("next_cursor"):
                    typer.echo(f"more: --cursor {body['next_cursor']}", err=True)
                return
            params = {**params, "cursor": body["next_cursor"]}


@app.command("list")
def packs_list(
    status: Annotated[str | None, typer.Option("--status", help="only packs in this status")] = None,
    limit: Limit = 20, cursor: Cursor = None, every: All = False, api_key: ApiKey = None, user: User = None,
) -> None:
    """Your packs, newest first: id, status, created, cost, charged, refunded."""
    key = _api_key(api_key, user)
    for page in pages("/v1/packs", key, {"status": status, "limit": limit, "cursor": cursor}, every):
        for p in page["packs"]:
            typer.echo(f"{p['pack_id']}  {p['status']:<10} {p['created_at']}  cost {p['cost']} "
                       f"charged {p['charged']} refunded {p['refunded']}")


def statement(limit: Limit = 20, cursor: Cursor = None, every: All = False, api_key: ApiKey = None, user: User = None) -> None:
    """Your balance, then its changes, newest first: when, kind, amount, balance after, pack, image."""
    key = _api_key(api_key, user)
    balance = next(pages("/v1/balance", key, {}, False))
    typer.echo(f"balance {balance['balance']}")
    for page in pages("/v1/ledger", key, {"limit": limit, "cursor": cursor}, every):
        for e in page["entries"]:
            typer.echo(f"{e['at']}  {e['kind']:<8} {e['amount']:>6} -> {e['balance']:<6} "
                       f"{e['pack_id'] or ''} {e['image_id'] or ''}".rstrip())
