"""The observability files in deploy/: the Grafana dashboard and the Prometheus alert rules
name only metrics the services register, Prometheus scrapes every service where it
listens, and docker-compose.yml provisions all of it (its schema check is in test_compose.py)."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import REGISTRY

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "packline.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
COMPOSE = ROOT / "docker-compose.yml"
# Every module that registers a metric is imported by one of these apps.
APPS = ("services.api.app", "services.notifier.app", "services.credits.app", "services.generation.app")
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created"),
            "gauge": ("",), "summary": ("_count", "_sum", "_created"), "info": ("_info",)}
METRIC = re.compile(r"\b(packline_[a-z0-9_]+)\b")


def registered() -> set[str]:
    """Every series name the services' metrics can expose (a labelled metric has no
    samples until its first use, so names come from the metric families)."""
    for module in APPS:
        importlib.import_module(module)
    names: set[str] = set()
    for family in REGISTRY.collect():
        names.add(family.name)
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]


def alert_exprs(rules: dict[str, Any]) -> list[str]:
    return [str(rule["expr"]) for group in rules["groups"] for rule in group["rules"]]


def unknown(exprs: list[str], known: set[str]) -> dict[str, set[str]]:
    """Metric names an expression uses that no service registers, per expression."""
    return {e: missing for e in exprs if (missing := set(METRIC.findall(e)) - known)}


def balanced(expr: str) -> bool:
    """Brackets and quotes pair up (no PromQL parser here: this catches the usual slips)."""
    closing = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    quoted = False
    for ch in expr:
        if ch == '"':
            quoted = not quoted
        elif quoted:
            continue
        elif ch in "([{":
            stack.append(ch)
        elif ch in closing and (not stack or stack.pop() != closing[ch]):
            return False
    return not stack and not quoted


def test_every_query_is_well_formed() -> None:
    exprs = dashboard_exprs(json.loads(DASHBOARD.read_text())) + alert_exprs(yaml.safe_load(ALERTS.read_text()))
    assert [e for e in exprs if not balanced(e)] == []
    assert not balanced('sum(rate(packline_provider_calls_total{outcome="ok"[5m]))')
    durations = [rule["for"] for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"] if "for" in rule]
    assert all(re.fullmatch(r"\d+[smhd]", d) for d in durations), durations


def test_the_dashboard_queries_name_registered_metrics() -> None:
    exprs = dashboard_exprs(json.loads(DASHBOARD.read_text()))
    assert len(exprs) >= 10 and all(METRIC.search(e) for e in exprs)
    assert unknown(exprs, registered()) == {}


def test_the_alert_rules_name_registered_metrics() -> None:
    rules = yaml.safe_load(ALERTS.read_text())
    exprs = alert_exprs(rules)
    assert unknown(exprs, registered()) == {}
    names = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    assert {"PacklineConsumerLagGrowing", "PacklineDeadLettersGrowing", "PacklineProviderErrors"} <= names


def test_the_check_catches_a_misspelt_metric() -> None:
    known = registered()
    assert unknown(["sum(rate(packline_provider_call_total[5m]))"], known) == {
        "sum(rate(packline_provider_call_total[5m]))": {"packline_provider_call_total"}}
    assert unknown(["histogram_quantile(0.9, rate(packline_provider_call_duration_seconds_bucket[5m]))"], known) == {}


def test_the_metrics_the_issue_asks_for_exist_with_their_buckets() -> None:
    known = registered()
    for name in ("packline_consumer_lag_messages", "packline_retry_depth_messages", "packline_dead_letters_messages",
                 "packline_pack_duration_seconds_bucket", "packline_http_request_duration_seconds_bucket",
                 "packline_provider_call_duration_seconds_bucket", "packline_provider_calls_total"):
        assert name in known, name
    from services.generation.observe import PROVIDER_SECONDS

    uppers = [float(s.labels["le"]) for s in PROVIDER_SECONDS.labels("ok").collect()[0].samples if s.name.endswith("_bucket")]
    assert 180.0 in uppers and max(u for u in uppers if u != float("inf")) == 180.0


def test_prometheus_scrapes_every_service_on_its_port_and_loads_the_rules() -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    targets = {t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    assert targets == {"api:8000", "notifier:8001", "credits:8002", "generation:8003"}
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]


def test_compose_provisions_prometheus_grafana_and_kafka_ui() -> None:
    spec = yaml.safe_load(COMPOSE.read_text())
    services = spec["services"]
    mounts = {s for svc in services.values() for s in svc.get("volumes", [])}
    assert "./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounts
    assert "./deploy/prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in mounts
    assert "./deploy/grafana/dashboards:/var/lib/grafana/dashboards:ro" in mounts
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in mounts
    for mount in mounts:
        source = mount.split(":")[0]
        if source.startswith("./"):
            assert (ROOT / source).exists(), mount
    provider = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "packline.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    assert services["kafka-ui"]["image"].startswith("kafbat/kafka-ui:")
    assert services["prometheus"]["image"].startswith("prom/prometheus:")
    assert services["grafana"]["image"].startswith("grafana/grafana:")
    # The workers' /metrics must be reachable from the Prometheus container.
    assert services["credits"]["environment"]["METRICS_HOST"] == "0.0.0.0"
