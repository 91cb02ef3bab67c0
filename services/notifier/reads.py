"""HTTP reads of the notifier besides snapshots and streams: the caller's packs
(`GET /v1/packs`), balance (`GET /v1/balance`) and statement (`GET /v1/ledger`). Every one
is the caller's own: the user comes from the API key, never from the request."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from pydantic import BaseModel

from services.notifier import listing
from services.notifier.deps import SettingsDep, StoreDep, UserDep
from services.notifier.fresh import LogEnd
from services.notifier.statement import StatementFeed, Statements
from shared.events import PackState
from shared.http import from_state

router = APIRouter()
Limit = Annotated[int, Query(ge=1, le=listing.MAX_LIMIT, description="page size, 1..100")]
Cursor = Annotated[str | None, Query(max_length=500, description="next_cursor of the previous page")]
BAD_CURSOR = "cursor is not one this service gave; start again without it"


async def statements(request: Request, settings: SettingsDep) -> Statements:
    """The statements once `credits.events` is read to the end offsets taken at start;
    before that a balance may be old: 503."""
    feed = from_state(request, "statements", StatementFeed)
    try:
        await asyncio.wait_for(feed.ready.wait(), settings.notifier_ready_timeout_s)
    except TimeoutError as exc:
        raise HTTPException(503, "not ready: still reading credits.events", headers={"Retry-After": "2"}) from exc
    return feed.statements


StatementsDep = Annotated[Statements, Depends(statements)]


class PacksPage(BaseModel):
    packs: list[dict[str, Any]]  # snapshots, as GET /v1/packs/{id} answers them
    next_cursor: str | None


class LedgerEntry(BaseModel):
    kind: Literal["grant", "debit", "refund", "recharge"]
    amount: int  # signed: what it did to the balance
    balance: int  # the balance after it
    pack_id: str | None
    image_id: str | None
    at: str


class LedgerPage(BaseModel):
    entries: list[LedgerEntry]
    next_cursor: str | None


def _json(body: str) -> Response:
    return Response(body, media_type="application/json")


@router.get("/v1/packs", responses={200: {"model": PacksPage}, 400: {"description": "bad cursor"}})
async def my_packs(
    request: Request, user_id: UserDep, store: StoreDep, status: PackState | None = None, cursor: Cursor = None,
    limit: Limit = listing.DEFAULT_LIMIT,
) -> Response:
    """The caller's packs, newest first (an unknown `status` is a 422 naming the valid ones),
    every pack posted before this request included."""
    try:
        before = None if cursor is None else listing.decode_cursor(cursor)
    except listing.BadCursor as exc:
        raise HTTPException(400, str(exc)) from exc
    await from_state(request, "log_end", LogEnd).wait_applied(store)
    snapshots, after = listing.page(store, user_id, status, before, limit)
    next_cursor = None if after is None else listing.encode_cursor(after)
    return _json(f'{{"packs": [{", ".join(snapshots)}], "next_cursor": {json.dumps(next_cursor)}}}')


@router.get("/v1/balance", responses={404: {"description": "no account (no balance change seen for this user)"}})
async def balance(user_id: UserDep, book: StatementsDep) -> dict[str, int]:
    found = book.balance(user_id)
    if found is None:
        raise HTTPException(404, "no account: no balance change of this user seen yet")
    return {"balance": found}


@router.get("/v1/ledger", responses={200: {"model": LedgerPage}, 400: {"description": "bad cursor"}})
async def ledger(user_id: UserDep, book: StatementsDep, cursor: Cursor = None, limit: Limit = listing.DEFAULT_LIMIT) -> Response:
    """The caller's balance changes, newest first; their amounts add up to the balance."""
    before = None if cursor is None else _entry_cursor(cursor)
    rows = book.entries(user_id, before, limit + 1)
    shown = rows[:limit]
    next_cursor = _entry_token(shown[-1][0]) if len(rows) > limit else None
    return _json(json.dumps({"entries": [entry for _, entry in shown], "next_cursor": next_cursor}))


def _entry_token(entry_id: int) -> str:
    return base64.urlsafe_b64encode(f"e{entry_id}".encode()).decode().rstrip("=")


def _entry_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if not text.startswith("e"):
            raise ValueError(text)
        entry_id = int(text[1:])
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise HTTPException(400, BAD_CURSOR) from exc
    if entry_id <= 0:
        raise HTTPException(400, BAD_CURSOR)
    return entry_id
