"""The whole pipeline with IMAGE_BACKEND=openai against the local images-API server."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.fake_images_api import PNG, FakeImagesApi
from tests.harness import RunningStack

pytestmark = pytest.mark.e2e


async def test_pack_completes_through_the_real_openai_client(kafka_bootstrap: str, tmp_path: Path) -> None:
    with FakeImagesApi.running() as fake, RunningStack.started(
        kafka_bootstrap, tmp_path, IMAGE_BACKEND="openai", OPENAI_API_KEY="test-key", OPENAI_BASE_URL=fake.base_url,
    ) as s:
        fake.plan.append(("status", 503))  # one transient failure on the way
        user = await s.create_user(credits=10)
        body = {"product": {"name": "Trail lantern", "features": ["500 lumen"]}}
        pack_id = (await s.post_pack(user, body)).json()["pack_id"]
        final = (await s.events(pack_id, user))[-1].json()
        assert final["status"] == "COMPLETED" and final["charged"] == 6
        assert len(fake.requests) == 7 and all("Trail lantern" in r["body"]["prompt"] for r in fake.requests)
        async with httpx.AsyncClient() as client:
            for img in final["images"]:
                assert (await client.get(img["url"], headers=s.auth(user))).content == PNG
