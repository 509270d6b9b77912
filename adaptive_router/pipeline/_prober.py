"""Health probes: a tiny request to the models the pool is unsure of, within a daily spend cap.

    prober = Prober(running)            # settings.probe: enabled, interval_s, idle_after_s, ...
    await prober.tick()                 # what the operations loop calls every probe.interval_s

Probed: every model whose circuit breaker is half-open (its cool-down is over: one request
decides whether it closes or opens again, and without traffic nobody would send it), and every
``routing.fallback_models`` entry no request tried for ``idle_after_s`` (a fallback is there for
bad moments; find out it is down before one). A probe asks for ``max_tokens`` tokens through the
executor, so its outcome feeds the learner and the breakers exactly like a client's attempt.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .._errors import RouterError
from .._settings import ProbeSettings
from ..core._decision import RouteRequest
from ._pipeline import Call, NoHook
from ._runtime import Running

__all__ = ["PROBE_PROMPT", "ProbeResult", "Prober"]

log = logging.getLogger("adaptive_router.prober")

PROBE_PROMPT = "Reply with OK."
_PROMPT_TOKENS = 16  # what the estimate of a probe's cost assumes the prompt costs (it is shorter)


@dataclass(frozen=True)
class ProbeResult:
    at: float  # wall time
    ok: bool
    outcome: str  # "ok", or the failed attempt's kind ("status_error", "timeout", ...)
    latency_ms: float
    cost_usd: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.at)),
            "ok": self.ok,
            "outcome": self.outcome,
            "latency_ms": round(self.latency_ms, 1),
        }


class _LastTried(NoHook):
    """Notes when each model was last attempted by a client's request."""

    def __init__(self, seen: dict[str, float], clock: Callable[[], float]) -> None:
        self.seen, self.clock = seen, clock

    def executed(self, call: Call) -> None:
        if call.result is not None:
            now = self.clock()
            for attempt in call.result.attempts:
                self.seen[attempt.model] = now


class Prober:
    """Probes half-open and idle fallback models of ``running`` (see the module's docstring)."""

    def __init__(
        self,
        running: Running,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.running = running
        self.clock, self.wall = clock, wall
        self.last: dict[str, ProbeResult] = {}
        self.counts: dict[tuple[str, str], int] = {}  # (model, outcome) -> probes
        self.spent_usd = 0.0  # today's (UTC)
        self.capped = False  # today's cap stopped a probe
        self._day = ""
        self._seen: dict[str, float] = {}
        running.pipeline.hooks.add(_LastTried(self._seen, clock))

    @property
    def settings(self) -> ProbeSettings:
        return self.running.service.settings.probe

    def due(self) -> list[str]:
        """Half-open models first, then fallback models idle for ``idle_after_s``."""
        pipeline = self.running.pipeline
        breakers, catalogue = pipeline.breakers, pipeline.router.catalogue
        breakers.refresh()  # cool-downs that ended become half-open, traffic or not
        models = [m for m, state in breakers.snapshot().items() if state == "half_open" and m in catalogue]
        now, idle = self.clock(), self.settings.idle_after_s
        for model in self.running.service.settings.routing.fallback_models:
            closed = breakers.state(model) == "closed"
            if closed and model not in models and now - self._seen.get(model, -math.inf) >= idle:
                models.append(model)
        return models

    async def tick(self) -> None:
        """Probe every model that is due, while today's spend allows."""
        for model in self.due():
            if not self._affordable(model):
                if not self.capped:
                    log.warning("health probes paused until 00:00 UTC: probe.daily_usd reached")
                self.capped = True
                return
            await self.probe(model)

    async def probe(self, model: str) -> ProbeResult | None:
        """One probe of ``model``; None when it could not be sent (not eligible, probe slot taken)."""
        pipeline, spec = self.running.pipeline, self.settings
        route = RouteRequest(prompt=PROBE_PROMPT, max_tokens=spec.max_tokens, model=model, fallback=False)
        try:
            decision = pipeline.router.decide(route)
        except RouterError:
            return None
        if decision.chain != [model]:
            return None  # not eligible now (its breaker opened in between, a reload denied it)
        body = {"messages": [{"role": "user", "content": PROBE_PROMPT}], "max_tokens": spec.max_tokens}
        started = self.clock()
        result = await pipeline.executor.complete(decision, body, spec.timeout_s)
        tried = [a for a in result.attempts if a.outcome != "breaker_open"]
        if not tried:
            return None
        self._seen[model] = self.clock()
        cost = 0.0
        if result.completion is not None:
            completion = result.completion
            cost = pipeline.cost(completion)
            self._charge(completion.model_id, completion.prompt_tokens, completion.completion_tokens, cost)
        outcome = tried[-1].outcome
        probe = ProbeResult(self.wall(), outcome == "ok", outcome, (self.clock() - started) * 1000, cost)
        self.last[model] = probe
        self.counts[(model, outcome)] = self.counts.get((model, outcome), 0) + 1
        return probe

    def _affordable(self, model: str) -> bool:
        day = time.strftime("%Y-%m-%d", time.gmtime(self.wall()))
        if day != self._day:
            self._day, self.spent_usd, self.capped = day, 0.0, False
        catalogue = self.running.pipeline.router.catalogue
        row = catalogue.index.get(model)
        if row is None:
            return True
        estimate = (
            float(catalogue.price_prompt[row]) * _PROMPT_TOKENS
            + float(catalogue.price_completion[row]) * self.settings.max_tokens
        )
        return self.spent_usd + estimate <= self.settings.daily_usd

    def _charge(self, model: str, prompt: int | None, completion: int | None, cost: float) -> None:
        """A probe's spend is real: today's probe total, the metrics, and the budget."""
        self.spent_usd += cost
        pipeline = self.running.pipeline
        pipeline.metrics.usage(model, prompt or 0, completion or 0, cost)
        if pipeline.budget is not None and cost > 0:
            pipeline.spawn(pipeline.budget.charge(None, cost))
