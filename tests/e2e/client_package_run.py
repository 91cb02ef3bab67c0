"""Run by tests/e2e/test_client_package.py with the python of a virtualenv that holds only the
client package: drives one scenario with packline_client and prints what it saw as JSON.

usage: python client_package_run.py SCENARIO '{"api": ..., "notifier": ..., "key": ..., ...}'
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from packline_client import (
    ImageEvent,
    PackEvent,
    Packline,
    PacklineError,
    Product,
    StreamEvent,
    publish_pack_request,
)

PRODUCT = Product("Steel bottle", "750 ml, keeps drinks cold", ["cold 24 h", "no plastic taste"])


def summary(event: StreamEvent) -> dict[str, Any]:
    if isinstance(event, PackEvent):
        return {"event": "pack", "id": event.id, "status": event.pack.status, "images": len(event.pack.images)}
    if isinstance(event, ImageEvent):
        return {"event": "image", "id": event.id, "status": event.image.status, "image_id": event.image.image_id,
                "url": event.image.url}
    return {"event": type(event).__name__, "id": getattr(event, "id", None)}


async def collect(packline: Packline, pack: Any, **kw: Any) -> list[dict[str, Any]]:
    return [summary(e) async for e in packline.follow(pack, **kw)]


async def http(cfg: dict[str, Any]) -> dict[str, Any]:
    async with Packline(cfg["api"], cfg["key"], notifier_url=cfg["notifier"]) as packline:
        first = await packline.submit(PRODUCT, images=cfg["images"], idempotency_key="client-order-1")
        again = await packline.submit(PRODUCT, images=cfg["images"], idempotency_key="client-order-1")
        try:
            await packline.submit(Product("Another thing"), idempotency_key="client-order-1")
            conflict = None
        except PacklineError as exc:
            conflict = exc.status_code
        live = await collect(packline, first)  # as a client does: from now, with the key
        replay = await collect(packline, first.pack_id, last_event_id="0")
        resumed = await collect(packline, first.pack_id, last_event_id=replay[2]["id"])
        snapshot = await packline.snapshot(first)
    async with Packline(cfg["api"], notifier_url=cfg["notifier"]) as keyless:  # the stream token alone
        by_token = await collect(keyless, first)
    return {"pack_id": first.pack_id, "again": again.pack_id, "cost": first.cost, "conflict": conflict, "live": live,
            "replay": replay, "resumed": resumed, "by_token": by_token,
            "snapshot": {"status": snapshot.status, "charged": snapshot.charged, "terminal": snapshot.terminal}}


async def kafka(cfg: dict[str, Any]) -> dict[str, Any]:
    pack_id = await publish_pack_request(
        cfg["bootstrap"], user_id=cfg["user"], product=PRODUCT, images=cfg["images"], topic_prefix=cfg["prefix"],
        source="client-package-test",
    )
    async with Packline(cfg["api"], cfg["key"], notifier_url=cfg["notifier"]) as packline:
        return {"pack_id": pack_id, "live": await collect(packline, pack_id)}


async def follow(cfg: dict[str, Any]) -> dict[str, Any]:
    """One pack from its first event, through whatever connection drops happen on the way."""
    async with Packline(cfg["api"], cfg["key"], notifier_url=cfg["notifier"]) as packline:
        return {"events": await collect(packline, cfg["pack_id"], last_event_id="0")}


async def changes(cfg: dict[str, Any]) -> dict[str, Any]:
    """cancel one pack at once; let another end PARTIAL, then regenerate its failed image."""
    async with Packline(cfg["api"], cfg["key"], notifier_url=cfg["notifier"]) as packline:
        doomed = await packline.submit(PRODUCT, images=cfg["images"])
        cancelled = await packline.cancel(doomed)
        cancel_events = await collect(packline, doomed)
        partial = await packline.submit(PRODUCT, images=cfg["partial_images"])
        first_run = await collect(packline, partial)
        regenerated = await packline.regenerate(partial, images=cfg["regenerate"])
        for _ in range(300):  # until the notifier has the reopened pack: a follow of a terminal one ends at once
            if (await packline.snapshot(partial)).seq > int(first_run[-1]["id"]):
                break
            await asyncio.sleep(0.1)
        second_run = await collect(packline, partial, last_event_id=first_run[-1]["id"])
    return {"cancelled": cancelled.status, "cancel_events": cancel_events, "first_run": first_run,
            "regenerated": {"status": regenerated.status, "run": regenerated.run}, "second_run": second_run}


if __name__ == "__main__":
    scenario, config = sys.argv[1], json.loads(sys.argv[2])
    print(json.dumps(asyncio.run({"http": http, "kafka": kafka, "follow": follow, "changes": changes}[scenario](config))))
