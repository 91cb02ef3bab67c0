"""The short version of `make bench-load`: the load client drives the public contract to the
end and its figures add up (every pack accepted and finished, every image counted, the CPU
of every process read). The figures themselves are the benchmark's, not asserted here."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e


def test_the_load_benchmark_runs_the_contract_end_to_end(kafka_bootstrap: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "tests.bench.load_bench", "--users", "2", "--rate", "5", "--seconds", "2", "--burst", "20"],
        env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap}, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    runs = re.findall(r"(\d+) packs \((\d+) images\) in [\d.]+ s; HTTP \{202: (\d+)\}; packs \{'COMPLETED': (\d+)\}", out.stdout)
    assert runs == [("10", "60", "10", "10"), ("20", "120", "20", "20")], out.stdout
    for process in ("api", "credits", "generation", "notifier", "load client"):
        assert re.search(rf"{process} \d+\.\d\d", out.stdout), (process, out.stdout)
    assert out.stdout.count("POST -> terminal event") == 2
    assert re.search(r"creating a file in \S+ costs \d+ us of CPU now", out.stdout), out.stdout


def test_the_hop_benchmark_times_every_record_of_both_hops(kafka_bootstrap: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "tests.bench.hop_bench", "--rates", "50", "--messages", "30", "--warm-up", "50"],
        env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap}, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "50 records/s, 30 records:" in out.stdout, out.stdout
    for line in ("produce (send -> ack)", "hop 1 (send -> read)", "hop 2 (read, send -> read)"):
        assert re.search(rf"{re.escape(line)}\s+p50\s+[\d.]+ p90\s+[\d.]+ p99\s+[\d.]+ ms", out.stdout), (line, out.stdout)



def test_the_sse_benchmark_delivers_every_event_and_each_is_written_by_the_change(kafka_bootstrap: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "tests.bench.sse_bench", "--clients", "60", "--packs", "10", "--events", "3", "--gap", "0.2",
         "--timeout", "60"],
        env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap}, capture_output=True, text=True, timeout=180,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "clients connected   60 / 60" in out.stdout and "events delivered    180 / 180" in out.stdout, out.stdout
    # Every client waited with nothing unsent when its event came: none of its 180 writes woke a stream's task.
    assert "written directly    180 of 180 events" in out.stdout, out.stdout
    assert re.search(r"latency ms\s+p50 [\d.]+\s+p90 [\d.]+\s+p99 [\d.]+", out.stdout), out.stdout
