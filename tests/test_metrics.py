"""Tests for adaptive_router.metrics.

Cost on the request path, measured with timeit (best of 5 x 100,000 calls, Python 3.11,
prometheus-client 0.26, this machine): attempt() + usage() + request() together take about
5.5 µs (request 2.5, attempt 1.7, usage 1.1), of which about 1.4 µs is the JSON side alone
(prometheus-client absent); summary() over a full 4096-request window takes about 160 µs.
Not asserted: wall-clock speed is not a test.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from adaptive_router.pipeline import INSTALL_HINT, Metrics

A = "openai/gpt-4o-mini"
B = "anthropic/claude-3-haiku"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(metrics: Metrics) -> Samples:
    body, _ = metrics.prometheus()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode("utf-8"))
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get(("adaptive_router_" + name, tuple(sorted(labels.items()))))


def finish(metrics: Metrics, model: str | None = A, outcome: str = "ok", latency_s: float = 0.5) -> None:
    metrics.request(model, outcome, latency_s, decision_us=40.0, attempts=1, cached=False, stream=False)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_prometheus_counters_carry_labels_and_values() -> None:
    metrics = Metrics()
    finish(metrics, A, "ok")
    finish(metrics, A, "ok")
    finish(metrics, None, "no_eligible")
    metrics.attempt(B, "timeout", 2.0)
    metrics.attempt(A, "ok", 0.4)
    metrics.fallback(B, A)
    metrics.cache(hit=True)
    metrics.cache(hit=False)
    metrics.cache(hit=False)
    metrics.usage(A, prompt_tokens=100, completion_tokens=20, cost_usd=0.25)
    metrics.usage(A, prompt_tokens=50, completion_tokens=5, cost_usd=0.5)
    samples = scrape(metrics)
    assert value(samples, "requests_total", model=A, outcome="ok") == 2
    assert value(samples, "requests_total", model="", outcome="no_eligible") == 1
    assert value(samples, "attempts_total", model=B, outcome="timeout") == 1
    assert value(samples, "attempts_total", model=A, outcome="ok") == 1
    assert value(samples, "fallbacks_total", from_model=B, to_model=A) == 1
    assert value(samples, "cache_requests_total", result="hit") == 1
    assert value(samples, "cache_requests_total", result="miss") == 2
    assert value(samples, "tokens_total", model=A, kind="prompt") == 150
    assert value(samples, "tokens_total", model=A, kind="completion") == 25
    assert value(samples, "spend_usd_total", model=A) == pytest.approx(0.75)


def test_prometheus_histograms_use_seconds_and_their_buckets() -> None:
    metrics = Metrics()
    finish(metrics, latency_s=0.3)  # decision 40 µs
    metrics.attempt(A, "ok", 0.2)
    samples = scrape(metrics)
    assert value(samples, "decision_seconds_bucket", le="2.5e-05") == 0
    assert value(samples, "decision_seconds_bucket", le="5e-05") == 1
    assert value(samples, "decision_seconds_sum") == pytest.approx(40e-6)
    assert value(samples, "request_seconds_bucket", le="0.25") == 0
    assert value(samples, "request_seconds_bucket", le="0.5") == 1
    assert value(samples, "request_seconds_bucket", le="120.0") == 1
    assert value(samples, "upstream_seconds_count", model=A) == 1
    assert value(samples, "upstream_seconds_bucket", le="0.25", model=A) == 1


def test_prometheus_request_without_decision_leaves_decision_histogram_alone() -> None:
    metrics = Metrics()
    metrics.request(A, "cache_hit", 0.003, decision_us=None, attempts=0, cached=True, stream=False)
    samples = scrape(metrics)
    assert value(samples, "decision_seconds_count") == 0
    assert value(samples, "request_seconds_count") == 1
    assert metrics.summary()["window"]["decision_count"] == 0


def test_prometheus_breaker_gauge_and_info_labels() -> None:
    metrics = Metrics()
    metrics.breaker(A, "open")
    metrics.breaker(B, "half_open")
    metrics.breaker(B, "closed")
    metrics.set_info(upstream="simulated", redis="up")
    metrics.set_info(redis="down")
    samples = scrape(metrics)
    assert value(samples, "breaker_state", model=A) == 2
    assert value(samples, "breaker_state", model=B) == 0
    assert value(samples, "info", upstream="simulated", redis="down") == 1
    summary = metrics.summary()
    assert summary["breakers"] == {B: "closed", A: "open"}
    assert summary["info"] == {"upstream": "simulated", "redis": "down"}


def test_prometheus_content_type_is_the_text_format() -> None:
    body, content_type = Metrics().prometheus()
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    assert b"# TYPE adaptive_router_requests_total counter" in body


def test_metrics_instances_do_not_share_series() -> None:
    first, second = Metrics(), Metrics()
    finish(first, A)
    first.cache(hit=True)
    samples = scrape(second)
    assert value(samples, "requests_total", model=A, outcome="ok") is None
    assert value(samples, "cache_requests_total", result="hit") == 0
    assert value(scrape(first), "requests_total", model=A, outcome="ok") == 1
    assert first.registry is not second.registry


def test_summary_percentiles_equal_numpy() -> None:
    rng = np.random.default_rng(7)
    latencies = rng.lognormal(-1.0, 0.8, size=500)
    decisions = rng.uniform(5.0, 900.0, size=500)
    metrics = Metrics(window=1000)
    for latency, decision in zip(latencies, decisions, strict=True):
        metrics.request(A, "ok", float(latency), float(decision), 1, False, False)
    window = metrics.summary()["window"]
    assert window["count"] == 500
    expected_ms = np.percentile(latencies * 1e3, [50, 95, 99])
    got_ms = window["latency_ms"]
    assert [got_ms["p50"], got_ms["p95"], got_ms["p99"]] == pytest.approx(expected_ms)
    assert got_ms["avg"] == pytest.approx(latencies.mean() * 1e3)
    got_us = window["decision_us"]
    expected_us = np.percentile(decisions, [50, 95, 99])
    assert [got_us["p50"], got_us["p95"], got_us["p99"]] == pytest.approx(expected_us)
    assert got_us["avg"] == pytest.approx(decisions.mean())


def test_summary_window_keeps_only_the_last_values() -> None:
    metrics = Metrics(window=8)
    for i in range(1, 21):  # 1..20 s; the window must hold 13..20
        metrics.request(A, "ok", float(i), float(i), 1, False, False)
    summary = metrics.summary()
    window = summary["window"]
    kept = np.arange(13.0, 21.0)
    assert window["count"] == 8
    assert window["latency_ms"]["avg"] == pytest.approx(kept.mean() * 1e3)
    assert window["latency_ms"]["p50"] == pytest.approx(np.percentile(kept, 50) * 1e3)
    assert window["decision_us"]["p99"] == pytest.approx(np.percentile(kept, 99))
    assert summary["requests"]["total"] == 20  # counts are since start, not windowed


def test_summary_is_empty_but_valid_before_any_request() -> None:
    summary = Metrics().summary()
    assert summary["window"]["count"] == 0
    assert summary["window"]["latency_ms"] == {"avg": None, "p50": None, "p95": None, "p99": None}
    assert summary["requests"]["avg_attempts"] is None
    assert summary["models"] == {}
    json.dumps(summary, allow_nan=False)


def test_summary_cache_hit_rate_is_null_before_any_lookup() -> None:
    metrics = Metrics()
    assert metrics.summary()["cache"] == {"hits": 0, "misses": 0, "hit_rate": None}
    metrics.cache(hit=True)
    metrics.cache(hit=False)
    metrics.cache(hit=False)
    metrics.cache(hit=True)
    assert metrics.summary()["cache"] == {"hits": 2, "misses": 2, "hit_rate": 0.5}


def test_summary_sums_usage_spend_and_errors_per_model() -> None:
    metrics = Metrics()
    for _ in range(3):
        finish(metrics, A)
    finish(metrics, B)
    finish(metrics, None, "upstream_error")
    metrics.attempt(B, "timeout", 1.0)
    metrics.attempt(B, "ok", 0.5)
    metrics.fallback(B, A)
    metrics.usage(A, 100, 10, 0.125)
    metrics.usage(A, 300, 30, 0.25)
    metrics.usage(B, 7, 3, 0.5)
    summary = metrics.summary()
    models = summary["models"]
    assert models[A] == {
        "requests": 3,
        "share": 0.75,
        "attempts": 0,
        "errors": 0,
        "prompt_tokens": 400,
        "completion_tokens": 40,
        "spend_usd": pytest.approx(0.375),
    }
    assert models[B]["share"] == 0.25
    assert (models[B]["attempts"], models[B]["errors"]) == (2, 1)
    assert summary["spend_usd"] == pytest.approx(0.875)
    assert summary["fallbacks"] == 1
    assert summary["requests"]["total"] == 5
    assert summary["requests"]["by_outcome"]["upstream_error"] == 1
    json.dumps(summary, allow_nan=False)


def test_summary_counts_streamed_cached_and_attempts() -> None:
    metrics = Metrics()
    metrics.request(A, "ok", 1.0, 50.0, attempts=3, cached=False, stream=True)
    metrics.request(A, "cache_hit", 0.01, None, attempts=0, cached=True, stream=False)
    requests = metrics.summary()["requests"]
    assert (requests["streamed"], requests["cached"], requests["avg_attempts"]) == (1, 1, 1.5)


def test_summary_uptime_follows_the_injected_clock() -> None:
    clock = FakeClock()
    metrics = Metrics(clock=clock)
    clock.now += 12.5
    assert metrics.summary()["uptime_s"] == 12.5


@given(
    st.integers(min_value=1, max_value=64),
    st.lists(st.floats(min_value=0.0, max_value=1e4, allow_nan=False), min_size=1, max_size=200),
)
def test_summary_percentiles_are_ordered_for_any_sequence(window: int, values: list[float]) -> None:
    metrics = Metrics(window=window)
    for v in values:
        metrics.request(A, "ok", v, v, 1, False, False)
    for stats in (metrics.summary()["window"]["latency_ms"], metrics.summary()["window"]["decision_us"]):
        assert stats["p50"] is not None and stats["p95"] is not None and stats["p99"] is not None
        assert stats["p50"] <= stats["p95"] <= stats["p99"]


def test_metrics_rejects_unknown_outcome_state_and_bad_usage() -> None:
    metrics = Metrics()
    with pytest.raises(ValueError, match="unknown request outcome"):
        finish(metrics, A, "fine")
    with pytest.raises(ValueError, match="unknown breaker state"):
        metrics.breaker(A, "ajar")
    with pytest.raises(ValueError, match="non-negative"):
        metrics.usage(A, -1, 0, 0.0)
    with pytest.raises(ValueError, match="non-negative"):
        metrics.usage(A, 1, 0, float("nan"))
    with pytest.raises(ValueError, match="at least 1"):
        Metrics(window=0)
    summary = metrics.summary()  # nothing half-recorded by the refused calls
    assert summary["requests"]["total"] == 0
    assert summary["models"] == {}


@pytest.fixture
def without_prometheus(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # None in sys.modules makes `import prometheus_client` raise ImportError, as if not installed.
    for name in [m for m in sys.modules if m == "prometheus_client" or m.startswith("prometheus_client.")]:
        monkeypatch.setitem(sys.modules, name, None)
    yield


@pytest.mark.usefixtures("without_prometheus")
def test_metrics_without_extra_summarises_and_names_the_extra() -> None:
    metrics = Metrics()
    finish(metrics, A)
    metrics.attempt(A, "ok", 0.4)
    metrics.usage(A, 10, 2, 0.01)
    metrics.cache(hit=True)
    metrics.breaker(A, "open")
    metrics.fallback(B, A)
    metrics.set_info(redis="up")
    with pytest.raises(ImportError) as excinfo:
        metrics.prometheus()
    assert INSTALL_HINT in str(excinfo.value)
    assert "adaptive-router[metrics]" in str(excinfo.value)
    summary = metrics.summary()
    assert summary["models"][A]["requests"] == 1
    assert summary["cache"]["hit_rate"] == 1.0
