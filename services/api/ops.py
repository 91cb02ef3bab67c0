"""The ops console: the page at /ops and its JSON endpoints under /v1/ops, every one for a
key with the `ops` scope. Dead letters (`services.ops.deadletters`, as `packline dlq`
sees them), replays at a chosen rate, a pack's timeline, lag and depth per topic, and the
provider switch. Every replay and every pause or resume is kept on ops.audit under the
identity of the key that asked (its user id and key id)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, Field

from services.api import ops_kafka
from services.api.deps import PublisherDep, SettingsDep, caught_up
from services.cli.redrive import Entry
from services.ops.deadletters import load_entries, matching, send_replays, user_of
from shared.errors import BrokerUnavailable
from shared.events import DlqReplayed, ProviderControl
from shared.http import ApiKey, Scoped
from shared.kafka import Outgoing

PAGE = Path(__file__).parent / "static" / "ops.html"
# A replay is answered when it is done, so a selection must fit in this at its rate, and
# every answer under the proxy's 60 s read timeout (deploy/nginx).
MAX_REPLAY_S = 50.0
TIMELINE_MAX_RECORDS = 200_000  # per scanned partition: the newest ones in the window
READ_TIMEOUT_S = 50.0

router = APIRouter()
OpsKey = Annotated[ApiKey, Depends(Scoped("ops"))]


def get_switch(request: Request) -> ops_kafka.ProviderSwitch:
    return caught_up(request, "provider_switch", ops_kafka.ProviderSwitch, "the provider switch")


SwitchDep = Annotated[ops_kafka.ProviderSwitch, Depends(get_switch)]


@router.get("/ops", response_class=HTMLResponse, include_in_schema=False)
async def page() -> HTMLResponse:
    """The page itself is public; everything it shows needs an operator key."""
    return HTMLResponse(PAGE.read_text())


@router.get("/v1/ops/whoami")
async def whoami(key: OpsKey) -> dict[str, Any]:
    return {"operator": key.user_id, "key_id": key.key_id}


def _summary(e: Entry) -> dict[str, Any]:
    data = {k: v for k, v in asdict(e).items() if k not in ("payload", "value", "headers")}
    return {**data, "kind": e.kind, "user_id": user_of(e)}


async def _entries(settings: SettingsDep) -> list[Entry]:
    try:
        return await asyncio.wait_for(load_entries(settings), READ_TIMEOUT_S)
    except TimeoutError as exc:
        raise HTTPException(504, "reading the dead-letter topics took too long; try again") from exc


@router.get("/v1/ops/dead-letters")
async def dead_letters(
    _key: OpsKey, settings: SettingsDep,
    error_type: Annotated[str | None, Query(max_length=200)] = None,
    pack: Annotated[str | None, Query(max_length=100)] = None,
    user: Annotated[str | None, Query(max_length=200)] = None,
    max_age_s: Annotated[float | None, Query(gt=0)] = None,
) -> dict[str, Any]:
    """images.dlq, invalid.dlq and webhooks.dlq, oldest first per partition, filtered; each
    with how often it was replayed, by whom, and whether it is parked."""
    entries = await _entries(settings)
    chosen = matching(entries, error_type=error_type or None, pack=pack or None, user=user or None, max_age_s=max_age_s)
    return {"entries": [_summary(e) for e in chosen], "total": len(entries), "max_replays": settings.dlq_max_replays,
            "error_types": sorted({e.error_type for e in entries if e.error_type})}


@router.get("/v1/ops/dead-letters/{entry_id}")
async def dead_letter(entry_id: str, _key: OpsKey, settings: SettingsDep) -> dict[str, Any]:
    """One entry in full: the original message's headers, and the message itself."""
    found = next((e for e in await _entries(settings) if e.id == entry_id), None)
    if found is None:
        raise HTTPException(404, f"no dead letter {entry_id}")
    try:
        message: Any = json.loads(found.payload)
    except ValueError:
        message = found.payload
    return {**_summary(found), "headers": [list(h) for h in found.headers], "message": message}


class ReplayRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ids: list[str] = Field(min_length=1, max_length=1000)
    rate: float = Field(default=10.0, gt=0, le=1000, description="replays per second")
    force: bool = Field(default=False, description="replay parked entries too")
    dry_run: bool = False


@router.post("/v1/ops/dead-letters/replay")
async def replay(body: ReplayRequest, key: OpsKey, settings: SettingsDep, publisher: PublisherDep) -> dict[str, Any]:
    """Replay the named entries at `rate` per second, as `packline dlq replay` does; answered
    once they are all sent and the replay is on ops.audit."""
    ids = list(dict.fromkeys(body.ids))
    if len(ids) / body.rate > MAX_REPLAY_S:
        raise HTTPException(400, f"{len(ids)} entries at {body.rate:g}/s take longer than {MAX_REPLAY_S:.0f}s: "
                                 "raise the rate or replay fewer at a time")
    by_id = {e.id: e for e in await _entries(settings)}
    unknown = [i for i in ids if i not in by_id]
    if unknown:
        raise HTTPException(404, f"no dead letter {', '.join(unknown)}")
    refused = [i for i in ids if not by_id[i].replayable]
    if refused:
        raise HTTPException(409, f"not replayable (its original topic is unknown, or it cannot be read): {', '.join(refused)}")
    parked = [i for i in ids if by_id[i].parked and not body.force]
    if parked:
        raise HTTPException(409, f"parked (replayed {settings.dlq_max_replays} times and failed again; "
                                 f"force to replay anyway): {', '.join(parked)}")
    chosen = [by_id[i] for i in ids]
    record = DlqReplayed(operator=key.user_id, key_id=key.key_id, entries=ids, dry_run=body.dry_run,
                         pack_ids=sorted({e.pack_id for e in chosen if e.pack_id}), forced=body.force)
    try:
        await send_replays(publisher, settings, chosen, record, body.rate)
    except BrokerUnavailable as exc:
        raise HTTPException(503, "Kafka did not take the replay; some entries may have been sent and are not "
                                 "recorded as replayed: list them again before retrying", headers={"Retry-After": "5"}) from exc
    return {"replayed": ids, "operator": key.user_id, "record": record.event_id, "dry_run": body.dry_run}


@router.get("/v1/ops/packs/{pack_id}/timeline")
async def pack_timeline(
    pack_id: str, _key: OpsKey, settings: SettingsDep,
    window_s: Annotated[float, Query(gt=0, le=90 * 24 * 3600)] = 7 * 24 * 3600,
) -> dict[str, Any]:
    """Every status event of the pack (attempts and errors included) and its ledger entries,
    from the last `window_s` of packs.status and credits.events."""
    try:
        found = await asyncio.wait_for(ops_kafka.timeline(settings, pack_id, window_s, TIMELINE_MAX_RECORDS), READ_TIMEOUT_S)
    except TimeoutError as exc:
        raise HTTPException(504, "scanning packs.status took too long; try a shorter window_s") from exc
    if found is None:
        raise HTTPException(404, f"no status of pack {pack_id} on packs.status in the last {window_s:.0f}s")
    return found


@router.get("/v1/ops/lag")
async def topic_lag(_key: OpsKey, settings: SettingsDep) -> dict[str, Any]:
    """Per topic: messages kept and written, and each consumer group's lag."""
    try:
        return await asyncio.wait_for(ops_kafka.lag(settings), READ_TIMEOUT_S)
    except TimeoutError as exc:
        raise HTTPException(504, "reading offsets took too long; try again") from exc


def _state(latest: ProviderControl | None) -> dict[str, Any]:
    if latest is None:
        return {"paused": False, "since": None, "operator": None, "reason": None}
    return {"paused": latest.paused, "since": latest.occurred_at.isoformat(), "operator": latest.operator,
            "reason": latest.reason}


@router.get("/v1/ops/provider")
async def provider(_key: OpsKey, switch: SwitchDep) -> dict[str, Any]:
    """Whether provider calls are paused: the newest record on generation.control."""
    return _state(switch.latest)


class SwitchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str | None = Field(default=None, max_length=500)


async def _switch(paused: bool, body: SwitchRequest | None, key: ApiKey, settings: SettingsDep, publisher: PublisherDep,
                  switch: ops_kafka.ProviderSwitch) -> dict[str, Any]:
    event = ProviderControl(paused=paused, operator=key.user_id, key_id=key.key_id, reason=body.reason if body else None)
    try:
        await publisher.send([Outgoing.of(settings.topics.generation_control, event, "provider"),
                              Outgoing.of(settings.topics.ops_audit, event, key.user_id)])
    except BrokerUnavailable as exc:
        raise HTTPException(503, "Kafka did not take the switch; nothing changed, try again", headers={"Retry-After": "5"}) from exc
    switch.latest = event  # this instance answers with it at once; it reads it back too
    return _state(event)


@router.post("/v1/ops/provider/pause")
async def pause(key: OpsKey, settings: SettingsDep, publisher: PublisherDep, switch: SwitchDep,
                body: SwitchRequest | None = None) -> dict[str, Any]:
    """Stop new provider calls in every generation process (calls under way finish); image
    jobs wait, none fails."""
    return await _switch(True, body, key, settings, publisher, switch)


@router.post("/v1/ops/provider/resume")
async def resume(key: OpsKey, settings: SettingsDep, publisher: PublisherDep, switch: SwitchDep,
                 body: SwitchRequest | None = None) -> dict[str, Any]:
    return await _switch(False, body, key, settings, publisher, switch)
