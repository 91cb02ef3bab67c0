"""While Kafka is down the api answers 503 (nothing charged, no hang); when it
is back the workers carry on by themselves and no accepted pack is lost."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from services.cli import sse
from shared.devbroker import Broker, free_port
from tests.harness import RunningStack

pytestmark = pytest.mark.e2e


async def test_api_503_during_outage_and_recovery_after(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "kafka", free_port(), free_port())
    await asyncio.to_thread(broker.start, 120)
    try:
        # Redrive on a short clock: the outage lands while images are in flight (docs/architecture.md, "Redrive").
        with RunningStack.started(broker.bootstrap, tmp_path / "stack", API_KAFKA_TIMEOUT_S="2", LOCAL_IMAGE_LATENCY_MS="1000",
                                  REDRIVE_AFTER_S="10", REDRIVE_EVERY_S="2") as s:
            user = await s.create_user(credits=12)
            in_flight = (await s.post_pack(user)).json()["pack_id"]
            async for ev in sse.follow(f"{s.notifier}/v1/packs/{in_flight}/events", s.auth(user), last_event_id="0", retries=0):
                if ev.event == "image":
                    break  # accepted, charged and generating when the broker goes away
            await asyncio.to_thread(broker.stop)

            started = time.monotonic()
            down = await s.post_pack(user, **{"Idempotency-Key": "during-outage"})
            waited = time.monotonic() - started
            assert down.status_code == 503 and down.headers["Retry-After"]
            assert "nothing was charged" in down.json()["detail"]
            print(f"\n503 after {waited:.1f} s with API_KAFKA_TIMEOUT_S=2")

            await asyncio.to_thread(broker.start, 120)
            deadline = time.monotonic() + 60
            while (again := await s.post_pack(user, **{"Idempotency-Key": "during-outage"})).status_code != 202:
                assert time.monotonic() < deadline, again.text
                await asyncio.sleep(1)
            for pack_id in (in_flight, again.json()["pack_id"]):
                assert (await s.events(pack_id, user, timeout=180))[-1].json()["status"] == "COMPLETED"
            assert await s.balance(user) == 0  # two packs of 6, each charged once
    finally:
        await asyncio.to_thread(broker.stop)
