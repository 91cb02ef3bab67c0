"""A short chaos run inside the suite (the full one is `make chaos`): kills, a broker
restart and transient backend failures must lose nothing and move no money twice."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.chaos.harness import Chaos, ChaosConfig

# Each run starts its own broker(s) and a dozen processes: minutes, more on a busy machine.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


async def test_short_chaos_run_keeps_every_invariant() -> None:
    work = Path(tempfile.mkdtemp(prefix="packline-chaos-"))
    try:
        cfg = ChaosConfig(packs=24, instances=2, kill_every_s=3, failure_rate=0.2, latency_ms=200,
                          submit_per_s=4, chaos_after_submit_s=10, quiet_timeout_s=300)
        report = await Chaos(cfg, work).run()
        print("\n" + "\n".join(report.lines()))
        assert report.submitted == cfg.packs
        assert report.kills and report.broker_restarts == 1
        assert report.clean, report.audit_output
        assert report.terminal == report.submitted
        assert "all invariants hold" in report.audit_output
    finally:
        await asyncio.to_thread(shutil.rmtree, work, True)


async def test_two_credits_processes_on_one_postgresql_never_double_charge(postgres_url: str) -> None:
    """Two credits processes share one PostgreSQL ledger while workers are killed."""
    work = Path(tempfile.mkdtemp(prefix="packline-chaos-pg-"))
    try:
        cfg = ChaosConfig(packs=16, instances=2, kill_every_s=4, broker_restart=False, failure_rate=0.2, latency_ms=200,
                          submit_per_s=4, chaos_after_submit_s=8, quiet_timeout_s=300, database_url=postgres_url)
        report = await Chaos(cfg, work).run()
        print("\n" + "\n".join(report.lines()))
        assert report.submitted == cfg.packs == report.terminal
        assert report.clean and "all invariants hold" in report.audit_output, report.audit_output
    finally:
        await asyncio.to_thread(shutil.rmtree, work, True)


async def test_short_chaos_run_on_a_cluster_survives_broker_kills() -> None:
    """Three brokers (RF 3, min ISR 2): the broker leading most packs.requested partitions
    and the active controller are SIGKILLed in turn while workers are killed too."""
    work = Path(tempfile.mkdtemp(prefix="packline-chaos-cluster-"))
    try:
        cfg = ChaosConfig(packs=20, instances=2, kill_every_s=4, broker_restart=False, failure_rate=0.15, latency_ms=200,
                          submit_per_s=2, chaos_after_submit_s=10, quiet_timeout_s=300,
                          brokers=3, broker_kill_every_s=6, broker_down_s=3)
        report = await Chaos(cfg, work).run()
        print("\n" + "\n".join(report.lines()))
        assert report.submitted == cfg.packs == report.terminal
        assert report.broker_kills.get("leader") == 1 and report.broker_kills.get("controller", 0) >= 1
        assert report.clean and "all invariants hold" in report.audit_output, report.audit_output
    finally:
        await asyncio.to_thread(shutil.rmtree, work, True)
