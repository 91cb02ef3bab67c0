"""The ops console at GET /ops, driven by a real headless Chromium against a real stack: an
operator finds a pack's dead letter, reads it, replays it, sees it marked replayed and the
pack complete on its timeline, with its ledger entries. Plus the console's API refusals."""

from __future__ import annotations

import asyncio
import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shared.auth import make_named_key, new_key_id
from shared.events import DlqReplayed, ProviderControl, decode
from tests.harness import OPERATOR, RunningStack, restart

pytestmark = pytest.mark.e2e

CHROMIUM = Path(os.environ.get("PACKLINE_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]

if importlib.util.find_spec("playwright") is None:
    pytest.skip("browser test skipped: playwright is not installed (pip install -e '.[dev]')", allow_module_level=True)
if not CHROMIUM.is_file():
    pytest.skip(f"browser test skipped: no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)


@pytest.fixture(scope="module")
def s(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    """`main` images fail for good until generation is restarted without that failure (the fix)."""
    with RunningStack.started(kafka_bootstrap, tmp_path_factory.mktemp("ops"), LOCAL_IMAGE_PERMANENT_FAIL_KINDS="main") as running:
        yield running


async def dead_letter_of(s: RunningStack, pack_id: str, timeout: float = 90) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not any(str(decode(r.value).pack_id) == pack_id for r in await s.records(s.topics.images_dlq)):
        assert asyncio.get_running_loop().time() < deadline, f"no dead letter of {pack_id}"
        await asyncio.sleep(0.3)


async def test_an_operator_replays_a_dead_letter_and_sees_the_pack_complete(s: RunningStack, tmp_path: Path) -> None:
    from playwright.async_api import async_playwright

    user = await s.create_user(credits=10)
    pack_id = (await s.post_pack(user, {"product": {"name": "Lamp"}, "images": ["main", "detail"]})).json()["pack_id"]
    assert (await s.events(pack_id, user))[-1].json()["status"] == "PARTIAL"
    await dead_letter_of(s, pack_id)
    restart(s, "generation", LOCAL_IMAGE_PERMANENT_FAIL_KINDS="")  # the fix is deployed; now replay

    problems: list[str] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 1100})
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            page.on("response", lambda r: problems.append(f"HTTP {r.status} {r.request.method} {r.url}") if r.status >= 400 else None)
            await page.goto(f"{s.api}/ops")

            # A user's key is not an operator's: the page says so and shows nothing.
            await page.fill("#key", s.key(user))
            await page.dispatch_event("#key", "change")
            await page.wait_for_function("() => document.querySelector('#who').textContent === 'not an operator'")
            assert "lacks scope ops" in await page.text_content("#error")
            assert await page.locator("#dlq tr").count() == 0

            await page.fill("#key", s.env["PACKLINE_OPERATOR_KEY"])
            await page.dispatch_event("#key", "change")
            await page.wait_for_function(f"() => document.querySelector('#who').textContent.startsWith('operator {OPERATOR}')")

            # Find the dead letter by its pack, and read it.
            await page.fill("#f-pack", pack_id)
            await page.click("#search")
            row = page.locator("#dlq tr")
            await page.wait_for_function(f"() => [...document.querySelectorAll('#dlq tr')].length === 1 && "
                                         f"document.querySelector('#dlq tr').textContent.includes('{pack_id} / main')")
            assert await row.get_attribute("data-replays") == "0"
            assert "PermanentImageError" in await row.text_content()
            entry_id = await row.get_attribute("data-id")
            await row.locator("td").nth(1).click()
            await page.wait_for_function("() => !document.querySelector('#detail').hidden")
            assert '"x-error-type": "PermanentImageError"' in await page.text_content("#detail-headers")
            assert f'"pack_id": "{pack_id}"' in await page.text_content("#detail-message")

            # Its timeline before: PARTIAL, main failed, one credit refunded.
            await page.fill("#t-pack", pack_id)
            await page.click("#t-load")
            await page.wait_for_function("() => document.querySelector('#t-status').textContent === 'PARTIAL'")

            # Replay it at a chosen rate: it is marked replayed, by this operator.
            await page.fill("#rate", "2")
            await row.locator(".pick").check()
            await page.click("#replay")
            await page.wait_for_function("() => document.querySelector('#replay-result').textContent.includes('1 replayed by')")
            await page.wait_for_function(f"() => document.querySelector('#dlq tr[data-id=\"{entry_id}\"]').dataset.replays === '1'")
            assert f"1x by {OPERATOR}" in await page.locator(f'#dlq tr[data-id="{entry_id}"]').text_content()

            # The timeline follows the pack to COMPLETED; the ledger shows the debit, the refund and the recharge.
            await page.wait_for_function("() => document.querySelector('#t-status').textContent === 'COMPLETED'", timeout=90_000)
            await page.wait_for_function("() => document.querySelector('#ledger tr[data-reason=recharged]') !== null", timeout=30_000)
            reasons = await page.eval_on_selector_all("#ledger tr", "rows => rows.map((r) => r.dataset.reason)")
            assert reasons == ["debited", "refunded", "recharged"], reasons
            statuses = await page.eval_on_selector_all(
                "#timeline tr", "rows => rows.map((r) => r.children[1].textContent + ' ' + r.dataset.status)")
            assert "image main FAILED" in statuses and "image main (run 1) COMPLETED" in statuses, statuses
            assert statuses[-1] == "pack COMPLETED", statuses

            # Lag and depth, read again: ops.audit now keeps the replay, images.dlq the entry;
            # the job consumers are listed.
            await page.click("#lag-refresh")
            kept = "(t) => Number(document.querySelector(`#lag tr[data-topic='${t}'] td:nth-child(2)`)?.textContent || 0)"
            await page.wait_for_function(f"() => ({kept})('ops.audit') >= 1 && ({kept})('images.dlq') >= 1")
            assert "packline-generation-jobs" in (await page.locator('#lag tr[data-topic="images.jobs"]').text_content() or "")

            # The provider switch: paused by this operator, then resumed.
            assert await page.text_content("#provider-state") == "running"
            await page.fill("#reason", "provider outage")
            await page.click("#pause")
            await page.wait_for_function("() => document.querySelector('#provider-state').textContent === 'paused'")
            assert f"paused by {OPERATOR}" in await page.text_content("#provider-info")
            await page.click("#resume")
            await page.wait_for_function("() => document.querySelector('#provider-state').textContent === 'running'")

            shot = Path(os.environ.get("PACKLINE_OPS_SCREENSHOT", tmp_path / "packline-ops.png"))
            await page.screenshot(path=str(shot), full_page=True)
        finally:
            await browser.close()
    # Only the deliberate 403s of the user's key failed.
    assert problems == [f"HTTP 403 GET {s.api}/v1/ops/whoami"], problems
    assert await s.balance(user) == 8  # both images delivered and paid for

    records = [decode(r.value) for r in await s.records(s.topics.ops_audit)]
    replays = [r for r in records if isinstance(r, DlqReplayed) and pack_id in r.pack_ids]
    assert [(r.operator, r.entries, r.dry_run) for r in replays] == [(OPERATOR, [entry_id], False)]
    assert replays[0].key_id is not None
    switches = [(r.paused, r.operator, r.reason) for r in records if isinstance(r, ProviderControl)]
    assert switches == [(True, OPERATOR, "provider outage"), (False, OPERATOR, "provider outage")]


async def test_the_console_api_refuses_what_it_should(s: RunningStack) -> None:
    ops = {"Authorization": f"Bearer {s.env['PACKLINE_OPERATOR_KEY']}"}
    stranger = {"Authorization": f"Bearer {make_named_key('another secret', OPERATOR, new_key_id(), ['ops'])}"}
    async with httpx.AsyncClient(base_url=s.api, timeout=60) as client:
        assert (await client.get("/v1/ops/dead-letters")).status_code == 401
        assert (await client.get("/v1/ops/lag", headers=stranger)).status_code == 401
        user = await s.create_user(credits=0)
        refused = await client.post("/v1/ops/provider/pause", headers=s.auth(user))
        assert refused.status_code == 403 and "ops" in refused.json()["detail"]
        unknown = await client.post("/v1/ops/dead-letters/replay", headers=ops, json={"ids": ["dlq:0:999999"], "rate": 5})
        assert unknown.status_code == 404 and "dlq:0:999999" in unknown.json()["detail"]
        too_slow = await client.post("/v1/ops/dead-letters/replay", headers=ops, json={"ids": ["a", "b", "c"], "rate": 0.01})
        assert too_slow.status_code == 400 and "raise the rate" in too_slow.json()["detail"]
        assert (await client.post("/v1/ops/dead-letters/replay", headers=ops, json={"ids": []})).status_code == 422
        missing = await client.get("/v1/ops/packs/00000000-0000-0000-0000-000000000000/timeline", headers=ops)
        assert missing.status_code == 404 and "no status" in missing.json()["detail"]
        assert (await client.get("/v1/ops/dead-letters/nope:0:0", headers=ops)).status_code == 404
