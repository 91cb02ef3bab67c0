"""`packline dlq`: inspect both dead-letter topics, replay image jobs, see who replayed what."""

from __future__ import annotations

import asyncio
import getpass
import json
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from services.cli import kafka_io
from shared.errors import InvalidMessage
from shared.events import DlqReplayed, ImageReplayed, decode, stable_id
from shared.kafka import Outgoing, header
from shared.settings import CommonSettings
from shared.topics import IMAGES_DLQ

app = typer.Typer(no_args_is_help=True, help="dead-letter topics: images.dlq (replayable) and invalid.dlq")
console = Console()


@dataclass
class Entry:
    id: str
    topic: str
    pack_id: str | None
    image_id: str | None
    original_topic: str | None
    error_type: str | None
    error: str | None
    attempts: int | None
    first_failed_at: str | None
    replayable: bool
    payload: str


async def load_entries(s: CommonSettings) -> list[Entry]:
    entries: list[Entry] = []
    for topic, short in ((s.topics.images_dlq, "dlq"), (s.topics.invalid_dlq, "invalid")):
        for r in await kafka_io.read_all(s.kafka, topic):
            pack_id = image_id = None
            replayable = False
            try:
                job = decode(r.value, IMAGES_DLQ.events)
                pack_id, image_id, replayable = str(job.pack_id), job.image_id, short == "dlq"
            except InvalidMessage:
                pass
            first = header(r.headers, "x-first-failed-at")
            attempts = header(r.headers, "x-attempts")
            entries.append(Entry(
                id=f"{short}:{r.partition}:{r.offset}", topic=topic, pack_id=pack_id, image_id=image_id,
                original_topic=header(r.headers, "x-original-topic"), error_type=header(r.headers, "x-error-type"),
                error=header(r.headers, "x-error"), attempts=int(attempts) if attempts and attempts.isdigit() else None,
                first_failed_at=datetime.fromtimestamp(int(first) / 1000, UTC).isoformat() if first and first.isdigit() else None,
                replayable=replayable, payload=(r.value or b"").decode(errors="replace"),
            ))
    return entries


def _filter(entries: list[Entry], pack: str | None, error_type: str | None) -> list[Entry]:
    return [e for e in entries if (pack is None or e.pack_id == pack) and (error_type is None or e.error_type == error_type)]


@app.command("list")
def dlq_list(
    pack: Annotated[str | None, typer.Option("--pack")] = None,
    error_type: Annotated[str | None, typer.Option("--error-type")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Entries of images.dlq and invalid.dlq, oldest first per partition."""
    entries = _filter(asyncio.run(load_entries(CommonSettings())), pack, error_type)
    if as_json:
        typer.echo(json.dumps([{k: v for k, v in asdict(e).items() if k != "payload"} for e in entries], indent=2))
        return
    table = Table("id", "pack", "image", "from", "error type", "attempts", "error")
    for e in entries:
        table.add_row(e.id, e.pack_id or "-", e.image_id or "-", e.original_topic or "-", e.error_type or "-",
                      str(e.attempts or "-"), (e.error or "")[:80])
    console.print(table)
    console.print(f"{len(entries)} entries")


@app.command("show")
def dlq_show(entry_id: str) -> None:
    """One entry in full: headers as fields, and the message itself."""
    entries = {e.id: e for e in asyncio.run(load_entries(CommonSettings()))}
    if entry_id not in entries:
        typer.echo(f"no entry {entry_id}", err=True)
        raise typer.Exit(1)
    data = asdict(entries[entry_id])
    payload = data.pop("payload")
    try:
        data["message"] = json.loads(payload)
    except ValueError:
        data["message"] = payload
    typer.echo(json.dumps(data, indent=2))


@app.command("replay")
def dlq_replay(
    ids: Annotated[list[str] | None, typer.Argument(help="entry ids from `dlq list`")] = None,
    pack: Annotated[str | None, typer.Option("--pack")] = None,
    all_: Annotated[bool, typer.Option("--all")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run")] = False,
    rate: Annotated[float, typer.Option("--rate", min=0.1, help="replays per second")] = 50.0,
    operator: Annotated[str, typer.Option("--operator")] = "",
) -> None:
    """Send dead-lettered image jobs back to images.jobs with a fresh attempt count."""
    if not ids and not pack and not all_:
        raise typer.BadParameter("name entry ids, --pack ID or --all")
    s = CommonSettings()
    entries = asyncio.run(load_entries(s))
    chosen = [e for e in entries if e.replayable and (all_ or (ids and e.id in ids) or (pack and e.pack_id == pack))]
    missing = set(ids or ()) - {e.id for e in chosen}
    if missing:
        typer.echo(f"not replayable or unknown: {', '.join(sorted(missing))}", err=True)
        raise typer.Exit(1)
    who = operator or getpass.getuser()
    for e in chosen:
        typer.echo(f"{'would replay' if dry_run else 'replaying'} {e.id}: pack {e.pack_id} image {e.image_id}")
    asyncio.run(_replay(s, chosen, who, dry_run, rate))
    typer.echo(f"{len(chosen)} entries {'would be ' if dry_run else ''}replayed")


async def _replay(s: CommonSettings, entries: list[Entry], operator: str, dry_run: bool, rate: float) -> None:
    async with kafka_io.open_publisher(s.kafka, "packline-cli-replay") as publisher:
        if not dry_run:
            with Progress(console=console, transient=True, disable=len(entries) < 20) as progress:
                task = progress.add_task("replaying", total=len(entries))
                for e in entries:
                    started = time.monotonic()
                    await publisher.send(replay_messages(s, e, operator))
                    progress.advance(task)
                    await asyncio.sleep(max(0.0, 1 / rate - (time.monotonic() - started)))
        record = DlqReplayed(operator=operator, entries=[e.id for e in entries],
                             pack_ids=sorted({e.pack_id for e in entries if e.pack_id}), dry_run=dry_run)
        await publisher.send([Outgoing.of(s.topics.ops_audit, record, operator)])


def replay_messages(s: CommonSettings, e: Entry, operator: str) -> list[Outgoing]:
    """Reopen the image (images.results, before the job exists), then the job itself."""
    job = decode(e.payload.encode(), IMAGES_DLQ.events)
    run = job.run + 1  # a function of the entry: replaying it twice names the same run
    reopened = ImageReplayed(
        event_id=stable_id(e.id, "replayed"), pack_id=job.pack_id, user_id=job.user_id, image_id=job.image_id,
        kind=job.kind, run=run, dlq_entry=e.id, operator=operator,
    )
    fresh = job.model_copy(update={"attempt": 1, "run": run, "event_id": stable_id(e.id, "replay-job")})
    headers = [("x-replayed-from", e.id.encode()), ("x-replayed-by", operator.encode())]
    return [
        Outgoing.of(s.topics.images_results, reopened, job.pack_id),
        Outgoing(s.topics.images_jobs, fresh.encode(), str(job.pack_id).encode(), headers),
    ]


@app.command("history")
def dlq_history(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Every replay: who, when, which entries."""
    s = CommonSettings()
    replays = asyncio.run(kafka_io.read_events(s.kafka, s.topics.ops_audit, (DlqReplayed,)))
    records: list[dict[str, Any]] = [ev.model_dump(mode="json") for ev in replays]
    if as_json:
        typer.echo(json.dumps(records, indent=2))
        return
    for rec in records:
        dry = " (dry run)" if rec["dry_run"] else ""
        typer.echo(f"{rec['occurred_at']}  {rec['operator']}{dry}: {len(rec['entries'])} entries {' '.join(rec['entries'])}")
