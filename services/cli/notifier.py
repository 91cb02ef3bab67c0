"""`packline notifier rebuild`: the notifier's read model, made again from `packs.status`.

Deleting the file and starting the notifier does the same (the notifier answers 503 until
it is done); this command builds the file beside the running system, e.g. for a new
instance. Packs whose events the topic no longer holds are not in the result: a lost
file loses them."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from services.notifier.settings import Settings

app = typer.Typer(no_args_is_help=True, help="the notifier's read model")
DbOption = Annotated[
    Path | None, typer.Option(help="the file to build; default NOTIFIER_DB_PATH, else VAR_DIR/notifier-<NOTIFIER_PORT>.db"),
]


@app.command("rebuild")
def rebuild(db: DbOption = None) -> None:
    """Build the read model from what packs.status holds now into a new file, which then
    replaces DB. Stop the notifier that owns DB first, or build another file for it."""
    from services.notifier.settings import Settings

    settings = Settings()
    target = db or settings.notifier_db
    fresh = target.with_name(target.name + ".rebuild")
    _remove(fresh)
    t0 = time.monotonic()
    packs, records = asyncio.run(_build(settings, fresh))
    _remove(target)
    fresh.replace(target)
    typer.echo(f"{target}: {packs} packs from {records} records of {settings.topics.packs_status} "
               f"in {time.monotonic() - t0:.1f} s")


async def _build(settings: Settings, path: Path) -> tuple[int, int]:
    """The notifier's own feed and store, from offset 0 to the end offsets taken at start."""
    from services.notifier.consumer import StatusFeed
    from services.notifier.readmodel import ReadModel
    from services.notifier.state import Store

    topic = settings.topics.packs_status
    model = ReadModel(path, topic)
    try:
        store = Store(settings.notifier_history, model, settings.notifier_cache_packs)
        feed = StatusFeed(settings.kafka, topic, store, settings.notifier_flush_s)
        await feed.start()
        await feed.ready.wait()
        await feed.stop()  # writes what is left, with the checkpoint
        return model.count(), feed.records
    finally:
        model.close()


def _remove(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
