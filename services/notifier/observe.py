"""What the notifier measures as it applies `packs.status`: a consumer span per record in
the pack's trace (the end of a pack's trace, where its client sees it), and each pack's
duration from the api's DRAFT to its terminal status."""

from __future__ import annotations

from prometheus_client import Histogram

from services.notifier.state import PackView, Store
from shared import tracing
from shared.consumer import Record
from shared.events import PackStatus
from shared.topics import PackFeed

PACK_SECONDS = Histogram(
    "packline_pack_duration_seconds", "from the pack request to its terminal status, by that status", ["status"],
    buckets=(1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0),
)


def apply(store: Store, record: Record, event: PackFeed, live: bool) -> PackView | None:
    """`store.apply(event)`, observed. `live`: the feed has caught up, so a status is news
    (catching up after a restart, old records make no spans and old packs are not measured again)."""
    if live and tracing.enabled():
        with tracing.consumed(record):
            pack = store.apply(event)
    else:
        pack = store.apply(event)
    if live and pack is not None and isinstance(event, PackStatus) and event.status.terminal:
        # Every notifier instance reads every pack: each observes it (dashboards take one instance's view).
        PACK_SECONDS.labels(event.status.value).observe(max(0.0, (event.occurred_at - pack.created_at).total_seconds()))
    return pack
