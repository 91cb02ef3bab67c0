"""`packline dlq`: inspect both dead-letter topics, replay from either, see who replayed what.

Replays are signed by an operator key (`services.cli.operator`) and recorded on ops.audit;
an image replayed DLQ_MAX_REPLAYS times that failed again is parked (`services.cli.redrive`)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from services.cli import kafka_io, operator
from services.cli.redrive import Entry
from services.ops.deadletters import load_entries, send_replays
from shared.events import DlqReplayed
from shared.settings import CommonSettings

app = typer.Typer(no_args_is_help=True, help="dead-letter topics: images.dlq, webhooks.dlq and invalid.dlq")
console = Console()
HIDDEN = ("payload", "value", "headers")


def _filter(entries: list[Entry], pack: str | None, error_type: str | None) -> list[Entry]:
    return [e for e in entries if (pack is None or e.pack_id == pack) and (error_type is None or e.error_type == error_type)]


def _table(title: str, entries: list[Entry]) -> Table:
    table = Table("id", "pack", "image", "from", "error type", "attempts", "replayed", "error", title=title)
    for e in entries:
        replayed = f"{e.replays}x by {','.join(e.replayed_by)}" if e.replays else "-"
        table.add_row(e.id, e.pack_id or "-", e.image_id or "-", e.original_topic or "-", e.error_type or "-",
                      str(e.attempts or "-"), replayed, (e.error or "")[:80])
    return table


@app.command("list")
def dlq_list(
    pack: Annotated[str | None, typer.Option("--pack")] = None,
    error_type: Annotated[str | None, typer.Option("--error-type")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Entries of images.dlq and invalid.dlq, oldest first per partition: which were
    replayed (how often, by whom), and apart from the rest, the parked ones."""
    s = CommonSettings()
    entries = _filter(asyncio.run(load_entries(s)), pack, error_type)
    if as_json:
        typer.echo(json.dumps([{k: v for k, v in asdict(e).items() if k not in HIDDEN} for e in entries], indent=2))
        return
    live, parked = [e for e in entries if not e.parked], [e for e in entries if e.parked]
    console.print(_table("dead letters", live))
    if parked:
        console.print(_table(f"parked: replayed {s.dlq_max_replays} times and failed again (replay with --force)", parked))
    console.print(f"{len(entries)} entries, {len(parked)} parked, {sum(1 for e in entries if e.replays)} replayed")


@app.command("show")
def dlq_show(entry_id: str) -> None:
    """One entry in full: headers as fields, and the message itself."""
    entries = {e.id: e for e in asyncio.run(load_entries(CommonSettings()))}
    if entry_id not in entries:
        typer.echo(f"no entry {entry_id}", err=True)
        raise typer.Exit(1)
    data = asdict(entries[entry_id])
    payload = data.pop("payload")
    del data["value"]
    try:
        data["message"] = json.loads(payload)
    except ValueError:
        data["message"] = payload
    typer.echo(json.dumps(data, indent=2))


def _choose(entries: list[Entry], ids: list[str], pack: str | None, all_: bool, force: bool) -> list[Entry]:
    """Named ids as asked (parked ones only with --force); --pack and --all take the
    images.dlq entries not replayed yet, parked ones only with --force."""
    by_id = {e.id: e for e in entries}
    unknown = [i for i in ids if i not in by_id or not by_id[i].replayable]
    if unknown:
        typer.echo(f"not replayable or unknown: {', '.join(sorted(unknown))}", err=True)
        raise typer.Exit(1)
    parked = [i for i in ids if by_id[i].parked and not force]
    if parked:
        typer.echo(f"parked (replayed too often already; --force to replay anyway): {', '.join(parked)}", err=True)
        raise typer.Exit(1)
    chosen = [by_id[i] for i in dict.fromkeys(ids)]
    for e in entries:
        if e.kind in ("dlq", "webhook") and e.replayable and not e.replays and e.id not in ids and (all_ or (pack and e.pack_id == pack)):
            if e.parked and not force:
                typer.echo(f"skipping parked {e.id}: pack {e.pack_id} image {e.image_id} (--force to replay it)")
                continue
            chosen.append(e)
    return chosen


@app.command("replay")
def dlq_replay(
    ids: Annotated[list[str] | None, typer.Argument(help="entry ids from `dlq list` (images.dlq or invalid.dlq)")] = None,
    pack: Annotated[str | None, typer.Option("--pack", help="the pack's images.dlq entries not replayed yet")] = None,
    all_: Annotated[bool, typer.Option("--all", help="every images.dlq entry not replayed yet")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run")] = False,
    rate: Annotated[float, typer.Option("--rate", min=0.1, help="replays per second")] = 50.0,
    force: Annotated[bool, typer.Option("--force", help="replay parked entries too")] = False,
    value_file: Annotated[Path | None, typer.Option("--value-file", help="a fixed message for one invalid.dlq entry")] = None,
    key: Annotated[str | None, typer.Option("--key", help=f"operator key (default ${operator.KEY_ENV})")] = None,
    label: Annotated[str, typer.Option("--operator", help="deprecated: a note on the record, not the identity")] = "",
) -> None:
    """Send dead-lettered image jobs back to images.jobs with a fresh attempt count, and
    invalid.dlq entries back to their original topic (as they were, or --value-file)."""
    if not ids and not pack and not all_:
        raise typer.BadParameter("name entry ids, --pack ID or --all")
    s = CommonSettings()
    who = operator.verify(s, key)
    if label:
        typer.echo("--operator is deprecated: the operator is the key's holder; the text is kept as a note", err=True)
    chosen = _choose(asyncio.run(load_entries(s)), list(ids or ()), pack, all_, force)
    value = None
    if value_file is not None:
        if len(chosen) != 1 or chosen[0].kind != "invalid":
            raise typer.BadParameter("--value-file replaces the message of exactly one invalid.dlq entry")
        value = value_file.read_bytes()
    for e in chosen:
        what = f"pack {e.pack_id} image {e.image_id}" if e.kind == "dlq" else f"to {e.original_topic}"
        typer.echo(f"{'would replay' if dry_run else 'replaying'} {e.id}: {what}")
    record = DlqReplayed(operator=who.name, key_id=who.key_id, entries=[e.id for e in chosen], dry_run=dry_run,
                         pack_ids=sorted({e.pack_id for e in chosen if e.pack_id}), forced=force, label=label or None)
    asyncio.run(_replay(s, chosen, record, value, rate))
    typer.echo(f"{len(chosen)} entries {'would be ' if dry_run else ''}replayed by {who.name}")


async def _replay(s: CommonSettings, entries: list[Entry], record: DlqReplayed, value: bytes | None, rate: float) -> None:
    async with kafka_io.open_publisher(s.kafka, "packline-cli-replay") as publisher:
        with Progress(console=console, transient=True, disable=len(entries) < 20 or record.dry_run) as progress:
            task = progress.add_task("replaying", total=len(entries))
            await send_replays(publisher, s, entries, record, rate, value, lambda: progress.advance(task))


@app.command("history")
def dlq_history(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Every replay: who (the operator key's holder), when, which entries."""
    s = CommonSettings()
    replays = asyncio.run(kafka_io.read_events(s.kafka, s.topics.ops_audit, (DlqReplayed,)))
    records: list[dict[str, Any]] = [ev.model_dump(mode="json") for ev in replays]
    if as_json:
        typer.echo(json.dumps(records, indent=2))
        return
    for rec in records:
        notes = (" (dry run)" if rec["dry_run"] else "") + (" (forced)" if rec["forced"] else "")
        key = f" key {rec['key_id']}" if rec["key_id"] else ""
        typer.echo(f"{rec['occurred_at']}  {rec['operator']}{key}{notes}: {len(rec['entries'])} entries {' '.join(rec['entries'])}")
