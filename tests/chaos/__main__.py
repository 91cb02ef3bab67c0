"""`make chaos`: python -m tests.chaos [--packs N] [--instances K] [--kill-every S] ..."""

from __future__ import annotations

import argparse
import sys

from tests.chaos.harness import ChaosConfig, run


def main() -> int:
    p = argparse.ArgumentParser(description="packline chaos run")
    p.add_argument("--packs", type=int, default=200)
    p.add_argument("--instances", type=int, default=3)
    p.add_argument("--kill-every", type=float, default=5.0)
    p.add_argument("--no-broker-restart", action="store_true")
    p.add_argument("--failure-rate", type=float, default=0.15)
    p.add_argument("--latency-ms", type=int, default=300)
    p.add_argument("--submit-per-s", type=float, default=10.0)
    p.add_argument("--database-url", default=None)
    p.add_argument("--seed", type=int, default=1, help="which processes are killed, and when")
    p.add_argument("--brokers", type=int, default=1, help="Kafka nodes; more than one: a replicated cluster")
    p.add_argument("--broker-kill-every", type=float, default=0.0, help="on a cluster: SIGKILL a broker this often")
    p.add_argument("--broker-down", type=float, default=5.0, help="seconds a killed broker stays down")
    p.add_argument("--min-broker-kills", type=int, default=2, help="keep killing brokers until this many kills")
    p.add_argument("--keep", action="store_true", help="keep the work dir (logs, var) for inspection")
    a = p.parse_args()
    cfg = ChaosConfig(
        packs=a.packs, instances=a.instances, kill_every_s=a.kill_every, broker_restart=not a.no_broker_restart,
        failure_rate=a.failure_rate, latency_ms=a.latency_ms, submit_per_s=a.submit_per_s, database_url=a.database_url,
        seed=a.seed, brokers=a.brokers, broker_kill_every_s=a.broker_kill_every, broker_down_s=a.broker_down,
        min_broker_kills=a.min_broker_kills,
    )
    report = run(cfg, keep=a.keep)
    print("\n".join(report.lines()))
    if not report.clean:
        print(report.audit_output)
    return 0 if report.clean else 1


if __name__ == "__main__":
    sys.exit(main())
