"""The router's measurements: Prometheus series for scrapers, a JSON summary for people.

    metrics = Metrics(window=4096)
    metrics.attempt("openai/gpt-4o-mini", "ok", latency_s=0.81)
    metrics.usage("openai/gpt-4o-mini", prompt_tokens=120, completion_tokens=48, cost_usd=0.00011)
    metrics.request("openai/gpt-4o-mini", "ok", latency_s=0.84, decision_us=42.0,
                    attempts=1, cached=False, stream=False)
    body, content_type = metrics.prometheus()   # GET /metrics
    metrics.summary()                            # GET /metrics.json

Recording is cheap enough for the request path: label children are looked up once per
(model, outcome) and kept, rolling windows are preallocated NumPy ring buffers, and the
percentiles are computed only when ``summary()`` asks. No locks: one event loop per process.

prometheus-client is the optional ``metrics`` extra. Without it everything is recorded for
``summary()`` and only ``prometheus()`` raises, with the install hint.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Gauge
    from prometheus_client.metrics import MetricWrapperBase

__all__ = [
    "BREAKER_STATES",
    "DECISION_BUCKETS",
    "INSTALL_HINT",
    "PREFIX",
    "REQUEST_BUCKETS",
    "REQUEST_OUTCOMES",
    "Metrics",
]

PREFIX = "adaptive_router_"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # set: every worker's series in one exposition
INSTALL_HINT = "pip install 'adaptive-router[metrics]'"
REQUEST_OUTCOMES = frozenset(
    {
        "ok",
        "upstream_error",
        "timeout",
        "client_error",
        "no_eligible",
        "rejected",
        "cache_hit",
        "cancelled",
        "error",
    }
)
# Requests refused before routing (or failed by a bug, "error"): counted, kept out of the latency window.
_UNTIMED = frozenset({"rejected", "no_eligible", "error"})
# The gauge value of breaker_state{model}: ordered by how much traffic the model is denied.
BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}
# A decision over a NumPy catalogue takes microseconds; buckets from 5 µs to 5 ms.
DECISION_BUCKETS = (5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3)
# A chat request or one upstream attempt: a cache hit in milliseconds to a long generation.
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
# generate_latest() writes the classic text format; newer clients' CONTENT_TYPE_LATEST names 1.0.0.
_TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# The model label of a request that no model answered (Prometheus reads "" as "no such label").
_NO_MODEL = ""

M = TypeVar("M", bound="MetricWrapperBase")


class _Ring:
    """The last ``size`` values in a preallocated float64 array; order is irrelevant to percentiles."""

    __slots__ = ("_buf", "_pos", "total")

    def __init__(self, size: int) -> None:
        self._buf: NDArray[np.float64] = np.zeros(size, dtype=np.float64)
        self._pos = 0
        self.total = 0

    def push(self, value: float) -> None:
        self._buf[self._pos] = value
        self._pos += 1
        if self._pos == self._buf.size:
            self._pos = 0
        self.total += 1

    def values(self) -> NDArray[np.float64]:
        return self._buf[: min(self.total, self._buf.size)]


def _stats(values: NDArray[np.float64], scale: float) -> dict[str, float | None]:
    if values.size == 0:
        return {"avg": None, "p50": None, "p95": None, "p99": None}
    p50, p95, p99 = np.percentile(values, (50.0, 95.0, 99.0)) * scale
    return {"avg": float(values.mean() * scale), "p50": float(p50), "p95": float(p95), "p99": float(p99)}


class _ModelStats:
    __slots__ = ("attempts", "completion_tokens", "errors", "prompt_tokens", "requests", "spend_usd")

    def __init__(self) -> None:
        self.requests = 0
        self.attempts = 0
        self.errors = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.spend_usd = 0.0

    def as_dict(self, answered: int) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "share": self.requests / answered if answered else None,
            "attempts": self.attempts,
            "errors": self.errors,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "spend_usd": self.spend_usd,
        }


def _child(cache: dict[str, M], family: M, label: str) -> M:
    """The child of a one-label ``family``, created once and kept in ``cache``."""
    child = cache.get(label)
    if child is None:
        child = cache[label] = family.labels(label)
    return child


def _child2(cache: dict[str, M], family: M, fixed: str, label: str) -> M:
    """The child of a two-label ``family`` whose first label is ``fixed`` for this ``cache``."""
    child = cache.get(label)
    if child is None:
        child = cache[label] = family.labels(fixed, label)
    return child


class _ModelSeries:
    """One model's Prometheus children, resolved once so recording is a dict lookup and an inc."""

    __slots__ = ("attempts", "completion", "prompt", "requests", "spend", "upstream")

    def __init__(self, series: _Series, model: str) -> None:
        self.requests: dict[str, Counter] = {}
        self.attempts: dict[str, Counter] = {}
        self.prompt = series.tokens.labels(model, "prompt")
        self.completion = series.tokens.labels(model, "completion")
        self.spend = series.spend.labels(model)
        self.upstream = series.upstream.labels(model)


_FILE_BACKED = frozenset({"counter", "gauge", "histogram", "summary"})


def _worker_registry() -> CollectorRegistry:
    """A registry for multiprocess mode: it keeps collectors and ``Info``, but not counters,
    gauges, histograms or summaries, whose values live in the workers' files and come out of
    the ``MultiProcessCollector`` (summed); registered here too they would be reported twice.
    So ``metrics.registry`` takes any metric a module adds, in either mode."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics import MetricWrapperBase

    class WorkerRegistry(CollectorRegistry):
        def register(self, collector: Any) -> None:
            if not (isinstance(collector, MetricWrapperBase) and collector._type in _FILE_BACKED):
                super().register(collector)

        def unregister(self, collector: Any) -> None:
            if not (isinstance(collector, MetricWrapperBase) and collector._type in _FILE_BACKED):
                super().unregister(collector)

    return WorkerRegistry()


class _Series:
    """The Prometheus side, in its own registry so two apps (or two tests) never share a series.

    In prometheus-client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` set, as ``serve
    --workers N`` does) the values live in files shared by the workers, and the registry
    collects them all: counts and histograms summed, a breaker's state the worst any live
    worker sees; ``info`` and added collectors stay this worker's own.
    """

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry

        self.registry = CollectorRegistry()
        if os.environ.get(MULTIPROC_ENV):
            from prometheus_client.multiprocess import MultiProcessCollector

            self.registry = _worker_registry()
            # prometheus_client's multiprocess module has no annotations (py.typed notwithstanding)
            MultiProcessCollector(self.registry)  # type: ignore[no-untyped-call]
        self._declare_counters(self.registry)
        self._declare_timings(self.registry)
        self.cache_hit = self.cache.labels("hit")
        self.cache_miss = self.cache.labels("miss")
        self.unanswered: dict[str, Counter] = {}  # requests_total{model=""} by outcome
        self._models: dict[str, _ModelSeries] = {}
        self._fallbacks: dict[str, dict[str, Counter]] = {}
        self._breakers: dict[str, Gauge] = {}

    def _declare_counters(self, reg: CollectorRegistry) -> None:
        from prometheus_client import Counter

        self.requests = Counter(
            PREFIX + "requests",
            "Client requests finished, by the model that answered and outcome.",
            ["model", "outcome"],
            registry=reg,
        )
        self.attempts = Counter(
            PREFIX + "attempts",
            "Upstream attempts, by model and outcome.",
            ["model", "outcome"],
            registry=reg,
        )
        self.fallbacks = Counter(
            PREFIX + "fallbacks",
            "Moves from a failed model to the next candidate.",
            ["from_model", "to_model"],
            registry=reg,
        )
        self.cache = Counter(PREFIX + "cache_requests", "Response cache lookups.", ["result"], registry=reg)
        self.tokens = Counter(
            PREFIX + "tokens", "Tokens billed, by model and kind.", ["model", "kind"], registry=reg
        )
        self.spend = Counter(PREFIX + "spend_usd", "Estimated spend in US dollars.", ["model"], registry=reg)

    def _declare_timings(self, reg: CollectorRegistry) -> None:
        from prometheus_client import Gauge, Histogram, Info

        self.decision = Histogram(
            PREFIX + "decision_seconds",
            "Time to rank the catalogue for one request.",
            buckets=DECISION_BUCKETS,
            registry=reg,
        )
        self.request = Histogram(
            PREFIX + "request_seconds",
            "Client request latency, end to end.",
            buckets=REQUEST_BUCKETS,
            registry=reg,
        )
        self.upstream = Histogram(
            PREFIX + "upstream_seconds",
            "Latency of one upstream attempt.",
            ["model"],
            buckets=REQUEST_BUCKETS,
            registry=reg,
        )
        self.breaker = Gauge(
            PREFIX + "breaker_state",
            "Circuit breaker per model: 0 closed, 1 half-open, 2 open.",
            ["model"],
            registry=reg,
            multiprocess_mode="livemax",
        )
        self.info = Info(PREFIX.rstrip("_"), "Static facts about this router process.", registry=reg)

    def model(self, model: str) -> _ModelSeries:
        series = self._models.get(model)
        if series is None:
            series = self._models[model] = _ModelSeries(self, model)
        return series

    def fallback(self, from_model: str, to_model: str) -> Counter:
        targets = self._fallbacks.get(from_model)
        if targets is None:
            targets = self._fallbacks[from_model] = {}
        return _child2(targets, self.fallbacks, from_model, to_model)

    def breaker_gauge(self, model: str) -> Gauge:
        return _child(self._breakers, self.breaker, model)


class Metrics:
    """Everything the router measures, for ``/metrics`` (Prometheus text) and ``/metrics.json``.

        metrics = Metrics()
        metrics.request(None, "no_eligible", latency_s=0.002, decision_us=31.0,
                        attempts=0, cached=False, stream=False)
        metrics.summary()["window"]["latency_ms"]["p99"]

    ``window`` is how many of the latest requests the rolling latency and decision-time
    percentiles cover; counts, usage and spend are since start. ``clock`` gives uptime.
    """

    def __init__(self, window: int = 4096, clock: Callable[[], float] = time.monotonic) -> None:
        if window < 1:
            raise ValueError(f"metrics window must be at least 1, got {window}")
        self._window = window
        self._clock = clock
        self._started = clock()
        self._latency = _Ring(window)
        self._decision = _Ring(window)
        self._outcomes = dict.fromkeys(sorted(REQUEST_OUTCOMES), 0)
        self._streamed = 0
        self._cached = 0
        self._attempts = 0
        self._models: dict[str, _ModelStats] = {}
        self._cache_hits = 0
        self._cache_misses = 0
        self._fallbacks = 0
        self._spend_usd = 0.0
        self._breakers: dict[str, str] = {}
        self._info: dict[str, str] = {}
        self._dropped: Callable[[], int] | None = None
        self._series: _Series | None = None
        self.sections: dict[str, Callable[[], Any]] = {}  # more summary() sections, e.g. "evaluation"
        self._missing: ImportError | None = None
        try:
            self._series = _Series()
        except ImportError as exc:  # the optional 'metrics' extra is absent: keep the JSON side
            self._missing = exc

    @property
    def registry(self) -> CollectorRegistry:
        """This instance's Prometheus registry (for adding collectors); ImportError without the extra."""
        return self._require().registry

    def _require(self) -> _Series:
        if self._series is None:
            raise ImportError(
                f"Prometheus exposition needs prometheus-client: {INSTALL_HINT}"
            ) from self._missing
        return self._series

    def _stats_for(self, model: str) -> _ModelStats:
        stats = self._models.get(model)
        if stats is None:
            stats = self._models[model] = _ModelStats()
        return stats

    def request(
        self,
        model: str | None,
        outcome: str,
        latency_s: float,
        decision_us: float | None,
        attempts: int,
        cached: bool,
        stream: bool,
    ) -> None:
        """One client request finished. ``model`` is None when no model answered; ``decision_us``
        is None when no decision was made (a cache hit, a rejected body)."""
        if outcome not in REQUEST_OUTCOMES:
            raise ValueError(
                f"unknown request outcome {outcome!r}; expected one of {sorted(REQUEST_OUTCOMES)}"
            )
        self._outcomes[outcome] += 1
        self._attempts += attempts
        self._streamed += stream
        self._cached += cached
        if outcome not in _UNTIMED:  # a refused body's "latency" says nothing about serving
            self._latency.push(latency_s)
        if decision_us is not None:
            self._decision.push(decision_us)
        if model is not None:
            self._stats_for(model).requests += 1
        series = self._series
        if series is not None:
            if model is None:
                _child2(series.unanswered, series.requests, _NO_MODEL, outcome).inc()
            else:
                _child2(series.model(model).requests, series.requests, model, outcome).inc()
            series.request.observe(latency_s)
            if decision_us is not None:
                series.decision.observe(decision_us * 1e-6)

    def attempt(self, model: str, outcome: str, latency_s: float) -> None:
        """One upstream attempt ended; ``outcome`` is "ok" or the error's kind (``UpstreamError.kind``).
        Anything but "ok" counts as an error of that model."""
        stats = self._stats_for(model)
        stats.attempts += 1
        stats.errors += outcome != "ok"
        series = self._series
        if series is not None:
            per_model = series.model(model)
            _child2(per_model.attempts, series.attempts, model, outcome).inc()
            per_model.upstream.observe(latency_s)

    def fallback(self, from_model: str, to_model: str) -> None:
        self._fallbacks += 1
        if self._series is not None:
            self._series.fallback(from_model, to_model).inc()

    def cache(self, hit: bool) -> None:
        """One response-cache lookup (only for cacheable requests)."""
        if hit:
            self._cache_hits += 1
        else:
            self._cache_misses += 1
        series = self._series
        if series is not None:
            (series.cache_hit if hit else series.cache_miss).inc()

    def usage(self, model: str, prompt_tokens: int, completion_tokens: int, cost_usd: float) -> None:
        """Tokens billed and their estimated cost for one answered attempt."""
        # Counters only go up; check before touching either side so both stay in step.
        if prompt_tokens < 0 or completion_tokens < 0 or not 0.0 <= cost_usd < math.inf:
            raise ValueError(
                f"usage must be finite and non-negative, got {prompt_tokens}, {completion_tokens}, {cost_usd}"
            )
        stats = self._stats_for(model)
        stats.prompt_tokens += prompt_tokens
        stats.completion_tokens += completion_tokens
        stats.spend_usd += cost_usd
        self._spend_usd += cost_usd
        series = self._series
        if series is not None:
            per_model = series.model(model)
            per_model.prompt.inc(prompt_tokens)
            per_model.completion.inc(completion_tokens)
            per_model.spend.inc(cost_usd)

    def breaker(self, model: str, state: str) -> None:
        """The model's circuit breaker changed state: "closed", "half_open" or "open"."""
        value = BREAKER_STATES.get(state)
        if value is None:
            raise ValueError(f"unknown breaker state {state!r}; expected one of {sorted(BREAKER_STATES)}")
        self._breakers[model] = state
        if self._series is not None:
            self._series.breaker_gauge(model).set(value)

    def watch_dropped(self, dropped: Callable[[], int]) -> None:
        """Export the traffic log's count of dropped lines (read at each scrape and summary)."""
        self._dropped = dropped
        if self._series is not None:
            self._series.registry.register(_DroppedCollector(dropped))

    def set_info(self, **labels: str) -> None:
        """Merge facts about the process into the info series, e.g. ``set_info(redis="up")``."""
        self._info.update(labels)
        if self._series is not None:
            self._series.info.info(self._info)

    def prometheus(self) -> tuple[bytes, str]:
        """The Prometheus text exposition and its content type, for ``GET /metrics``."""
        registry = self._require().registry
        from prometheus_client import generate_latest

        return generate_latest(registry), _TEXT_CONTENT_TYPE

    def summary(self) -> dict[str, Any]:
        """The ``/metrics.json`` body: rolling latency percentiles, usage and counts since start."""
        return {
            "pid": os.getpid(),  # with several workers, whose counts these are
            "uptime_s": self._clock() - self._started,
            "requests": self._requests_summary(),
            "window": self._window_summary(),
            "models": self._models_summary(),
            "cache": self._cache_summary(),
            "fallbacks": self._fallbacks,
            "spend_usd": self._spend_usd,
            "breakers": dict(sorted(self._breakers.items())),
            "info": dict(self._info),
            "traffic_log": {"dropped": self._dropped() if self._dropped is not None else None},
            **{name: section() for name, section in self.sections.items()},
        }

    def _requests_summary(self) -> dict[str, Any]:
        total = sum(self._outcomes.values())
        return {
            "total": total,
            "by_outcome": dict(self._outcomes),
            "streamed": self._streamed,
            "cached": self._cached,
            "avg_attempts": self._attempts / total if total else None,
        }

    def _window_summary(self) -> dict[str, Any]:
        latency = self._latency.values()
        decision = self._decision.values()
        return {
            "size": self._window,
            "count": int(latency.size),
            "latency_ms": _stats(latency, 1e3),
            "decision_count": int(decision.size),
            "decision_us": _stats(decision, 1.0),
        }

    def _models_summary(self) -> dict[str, dict[str, Any]]:
        answered = sum(stats.requests for stats in self._models.values())
        return {model: self._models[model].as_dict(answered) for model in sorted(self._models)}

    def _cache_summary(self) -> dict[str, Any]:
        lookups = self._cache_hits + self._cache_misses
        return {
            "hits": self._cache_hits,
            "misses": self._cache_misses,
            "hit_rate": self._cache_hits / lookups if lookups else None,
        }


class _DroppedCollector:
    """``adaptive_router_traffic_log_dropped_total``: lines the traffic log dropped (full queue)."""

    def __init__(self, dropped: Callable[[], int]) -> None:
        self._dropped = dropped

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily

        yield CounterMetricFamily(
            PREFIX + "traffic_log_dropped",
            "Traffic-log lines dropped because the writer's queue was full.",
            value=self._dropped(),
        )
