"""What an operator reads in the process log: one access line per routed request, upstream
failures and breaker changes (rate-limited), and a start-up summary. Plugged in as pipeline hooks
and as the executor's observer; never a prompt, an answer or a key.

    hooks = access_hooks(interval_s=10.0)      # the access line and failed attempts
    for hook in hooks:
        pipeline.hooks.add(hook)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx

from .._logs import Throttle
from ..upstream._execution import AttemptObserver
from ._pipeline import Call, NoHook

if TYPE_CHECKING:
    from ..upstream._execution import Executor
    from ._runtime import Running

__all__ = [
    "LOG_INTERVAL_S",
    "AccessLog",
    "BreakerLog",
    "FailureLog",
    "access_status",
    "install_observers",
    "startup_summary",
]

LOG_INTERVAL_S = 10.0  # at most one upstream-failure or breaker line per model this often
log = logging.getLogger("adaptive_router.service")
access_log = logging.getLogger("adaptive_router.access")
upstream_log = logging.getLogger("adaptive_router.upstream")

# The HTTP status a client saw for a routed request that ended with this outcome.
_STATUS = {"ok": 200, "cache_hit": 200, "upstream_error": 502, "timeout": 504, "cancelled": 499}
_NOT_TRIED = frozenset({"ok", "breaker_open", "cancelled"})


def access_status(call: Call) -> int:
    """What the client was answered: a stream that started is a 200, whatever happened later."""
    result = call.result
    if result is not None and result.stream is not None:
        return 200
    if call.outcome == "client_error" and result is not None and result.client_fault is not None:
        return result.client_fault.status_code
    return _STATUS.get(call.outcome, 500)


def access_fields(call: Call, latency_s: float) -> dict[str, Any]:
    """The access line of a finished call: ids, models, attempts, status, timing, tokens, cost."""
    decision, result, completion = call.decision, call.result, call.completion
    fields: dict[str, Any] = {
        "request_id": decision.request_id if decision is not None else call.route.request_id,
        "requested": call.model,
        "model": _answered_by(call),
        "status": access_status(call),
        "outcome": call.outcome,
        "attempts": len(result.attempts) if result is not None else 0,
        "latency_ms": round(latency_s * 1000, 2),
        "stream": call.stream,
        "cache": "hit" if call.outcome == "cache_hit" else call.cache_state,
    }
    if decision is not None:
        fields["mode"] = decision.mode
        fields["explored"] = bool(decision.explored)
    if completion is not None:
        fields["ttft_ms"] = round(completion.ttft_s * 1000, 2) if completion.ttft_s is not None else None
        fields["prompt_tokens"] = completion.prompt_tokens
        fields["completion_tokens"] = completion.completion_tokens
    fields["cost_usd"] = call.cost_usd
    return fields


def _answered_by(call: Call) -> str | None:
    if call.outcome == "cache_hit" and call.answer is not None:
        model = call.answer.get("model")
        return model if isinstance(model, str) else None
    return call.result.model if call.result is not None else None


class AccessLog(NoHook):
    """One INFO line per routed request, when it is accounted (a stream: when it ends)."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock

    def accounted(self, call: Call) -> None:
        if access_log.isEnabledFor(logging.INFO):
            fields = access_fields(call, self._clock() - call.started)
            access_log.info("access", extra={"fields": fields})


class FailureLog(NoHook):
    """A WARNING per failed upstream attempt, at most one per model every ``interval_s``."""

    def __init__(self, interval_s: float) -> None:
        self._throttle = Throttle(interval_s)

    def executed(self, call: Call) -> None:
        result = call.result
        if result is None:
            return
        for attempt in result.attempts:
            if attempt.outcome in _NOT_TRIED:
                continue
            held = self._throttle.allow(attempt.model)
            if held is None:
                continue
            fields = {
                "model": attempt.model,
                "outcome": attempt.outcome,
                "status": attempt.status,
                "latency_ms": round(attempt.latency_ms, 2),
                "error": attempt.error,
                "request_id": call.decision.request_id if call.decision is not None else None,
                "suppressed": held or None,
            }
            upstream_log.warning("upstream attempt failed", extra={"fields": fields})


class BreakerLog:
    """The executor's observer: forwards everything to ``inner`` (the metrics) and logs a breaker
    letting a model back in (half-open) or closing; the breakers log an opening themselves."""

    def __init__(self, inner: AttemptObserver, interval_s: float) -> None:
        self.inner = inner
        self._throttle = Throttle(interval_s)

    def attempt(self, model: str, outcome: str, latency_s: float) -> None:
        self.inner.attempt(model, outcome, latency_s)

    def fallback(self, from_model: str, to_model: str) -> None:
        self.inner.fallback(from_model, to_model)

    def breaker(self, model: str, state: str) -> None:
        self.inner.breaker(model, state)
        if state == "open":
            return
        held = self._throttle.allow(f"{model}:{state}")
        if held is not None:
            fields = {"model": model, "state": state, "suppressed": held or None}
            upstream_log.info("circuit breaker %s", state.replace("_", "-"), extra={"fields": fields})


def _safe_url(url: str) -> str:
    """A provider's URL without any user:password part."""
    try:
        return str(httpx.URL(url).copy_with(username=None, password=None))
    except (httpx.InvalidURL, TypeError):
        return "<invalid url>"


def startup_summary(running: Running, tracing: bool) -> dict[str, Any]:
    """What this process serves with, for the log line at start-up (no key is ever included)."""
    service, pipeline = running.service, running.pipeline
    settings, catalogue = service.settings, service.router.catalogue
    providers = [
        f"{p.name}={_safe_url(p.base_url)}" + ("" if p.api_key or service.simulated else " (no key)")
        for p in service.providers
    ]
    return {
        "catalogue_models": len(catalogue),
        "catalogue_source": catalogue.source,
        "upstream": service.upstream_mode,
        "providers": ", ".join(providers),
        "policy": service.router.policy.name,
        "redis": settings.redis.topology or "none",
        "cache": pipeline.cache.backend,
        "auth": f"on ({len(service.keys)} keys)" if service.keys else "off",
        "budget": "on" if pipeline.budget is not None else "off",
        "traffic_log": settings.server.traffic_log or "off",
        "tracing": "on" if tracing else "off",
        "log_level": settings.server.log_level,
    }


def install_observers(running: Running, executor: Executor, tracer: Any | None) -> None:
    """The access line, failure logging and (with a tracer) spans, on an opened service."""
    pipeline, settings = running.pipeline, running.service.settings
    if settings.server.access_log:
        pipeline.hooks.add(AccessLog())
    pipeline.hooks.add(FailureLog(LOG_INTERVAL_S))
    if tracer is not None:
        from opentelemetry import propagate

        from ._tracing import AttemptTracer, TraceHook

        pipeline.hooks.add(TraceHook(tracer))
        executor.tracer = AttemptTracer(tracer, lambda model: running.client.provider_for(model).name)
        running.client.inject = propagate.inject
    log.info("serving", extra={"fields": startup_summary(running, tracer is not None)})
