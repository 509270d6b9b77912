"""The Grafana dashboard (deploy/grafana/adaptive-router.json) asks only for what the service
exports: every metric and label in its PromQL appears in a real server's ``/metrics``."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("prometheus_client")

from prometheus_client.parser import text_string_to_metric_families

from tests.service_fixtures import FAST, fail, service_stack, user_body

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "adaptive-router.json"
METRIC = re.compile(r"\b(adaptive_router_[a-z_]+)(\{[^}]*\})?")
MATCHER = re.compile(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)\s*\"")
GROUPING = re.compile(r"\b(?:by|ignoring|on)\s*\(([^)]*)\)")


def expressions(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", []) if t.get("expr")]


def exported(metrics_text: str) -> dict[str, set[str]]:
    """Sample name -> its label names, as scraped."""
    samples: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            samples.setdefault(sample.name, set()).update(sample.labels)
    return samples


def scrape_after_traffic(monkeypatch: pytest.MonkeyPatch) -> str:
    """A fallback (a breaker opens), a cache miss and a hit: every series has a sample."""
    settings = {"upstream": {"breaker_failures": 1}}
    with service_stack(monkeypatch, events=[fail(FAST)], **settings) as stack:
        cacheable = user_body(temperature=0)
        for body in (user_body(), cacheable, cacheable):
            assert stack.chat(body).status_code == 200
        response = stack.http.get("/metrics")
        assert response.status_code == 200
        return response.text


def test_every_dashboard_expression_names_only_exported_metrics_and_labels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = expressions(dashboard)
    assert len(exprs) >= 10
    samples = exported(scrape_after_traffic(monkeypatch))
    for expr in exprs:
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr
        used = METRIC.findall(expr)
        assert used, f"no adaptive_router metric in {expr!r}"
        labels: set[str] = {"le", "instance", "job"}  # le: histogram buckets; the others: Prometheus's
        for name, selector in used:
            assert name in samples, f"{name} (in {expr!r}) is not exported; have {sorted(samples)}"
            labels |= samples[name]
            for label in MATCHER.findall(selector):
                assert label in samples[name], f"{name} has no label {label!r} (in {expr!r})"
        for group in GROUPING.findall(expr):
            for label in filter(None, (part.strip() for part in group.split(","))):
                assert label in labels, f"label {label!r} grouped by in {expr!r} is on none of its metrics"


def test_dashboard_covers_what_an_operator_watches() -> None:
    text = " ".join(expressions(json.loads(DASHBOARD.read_text())))
    for metric in (
        "adaptive_router_requests_total",  # traffic share per model
        "adaptive_router_decision_seconds_bucket",
        "adaptive_router_upstream_seconds_bucket",
        "adaptive_router_fallbacks_total",
        "adaptive_router_cache_requests_total",
        "adaptive_router_spend_usd_total",
        "adaptive_router_breaker_state",
    ):
        assert metric in text
