"""Evaluations as a pipeline hook: after an answer is accounted, score it off the request path.

    evaluations = Evaluations(settings.evaluation, router, executor, pipeline.cost)
    pipeline.hooks.add(evaluations)
    await evaluations.start()     # the workers; ``stop()`` cancels them

At ``accounted`` the hook only puts the answer on a bounded queue (a full queue skips it and
counts it): the answer goes out whatever happens next. Workers run the built-in and plug-in
evaluators, the judge on a sample, and shadow comparisons on a smaller sample; every score goes
to the learner as feedback for the model that answered, weighted per evaluator, and to the
traffic log. An evaluator that raises, a judge that times out, fails or is over its budget is
skipped and counted (``/metrics.json`` ``evaluation``; Prometheus ``evaluations_total``).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from .._evaluation_settings import EvaluationSettings
from ..core._decision import Decision
from ..core._router import Router
from ..evaluation._builtin import (
    Evaluator,
    Sample,
    builtin_evaluators,
    capped,
    load_plugin,
    wants_json,
)
from ..evaluation._judge import DailySpend, Judge, side_decision
from ..offline._preferences import evaluation_record, preference_record
from ..offline._trafficlog import TrafficLog
from ..upstream._client import Completion
from ..upstream._execution import Executor
from ..upstream._text import answer_text, has_tool_calls
from ._metrics import PREFIX, Metrics
from ._pipeline import Call, NoHook

__all__ = ["EvaluationStats", "Evaluations"]

log = logging.getLogger("adaptive_router.evaluation")


class EvaluationStats:
    """Counts by evaluator and outcome (``scored``, ``silent``, ``error``, the judge's skips...)."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self.counts: dict[str, dict[str, int]] = {}
        self._counter: Any = None
        self._children: dict[tuple[str, str], Any] = {}  # labels() costs more than inc(): kept
        if metrics is not None:
            with contextlib.suppress(ImportError):  # no prometheus-client: the JSON side only
                from prometheus_client import Counter

                self._counter = Counter(
                    PREFIX + "evaluations",
                    "Answer evaluations after the response, by evaluator and outcome.",
                    ["evaluator", "outcome"],
                    registry=metrics.registry,
                )

    def count(self, evaluator: str, outcome: str) -> None:
        per = self.counts.setdefault(evaluator, {})
        per[outcome] = per.get(outcome, 0) + 1
        if self._counter is not None:
            child = self._children.get((evaluator, outcome))
            if child is None:
                child = self._children[evaluator, outcome] = self._counter.labels(evaluator, outcome)
            child.inc()

    def get(self, evaluator: str, outcome: str) -> int:
        return self.counts.get(evaluator, {}).get(outcome, 0)

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {name: dict(sorted(per.items())) for name, per in sorted(self.counts.items())}


@dataclass(frozen=True, slots=True)
class _Job:
    call: Call  # finished: read by the worker only
    judge: bool
    shadow: bool


def _name(evaluator: Evaluator) -> str:
    name = getattr(evaluator, "name", None)
    return name if isinstance(name, str) else type(evaluator).__name__


def sample_of(call: Call, completion: Completion) -> Sample:
    """What evaluators see of a finished call."""
    body = call.body
    messages = body.get("messages")
    if not isinstance(messages, list):
        prompt = call.route.prompt or ""
        messages = [{"role": "user", "content": prompt}]
    assert call.decision is not None
    return Sample(
        request_id=call.decision.request_id,
        model=completion.model_id,
        messages=messages,
        text=answer_text(completion),
        finish_reason=completion.finish_reason,
        wants_json=wants_json(body),
        tool_calls=has_tool_calls(completion),
        capped=capped(body),
        streamed=call.stream,
        body=body,
    )


class Evaluations(NoHook):
    """The ``accounted`` hook that queues answers, and the workers that evaluate them."""

    def __init__(
        self,
        settings: EvaluationSettings,
        router: Router,
        executor: Executor,
        cost: Callable[[Completion], float],
        *,
        traffic_log: TrafficLog | None = None,
        stats: EvaluationStats | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.executor, self.cost, self.clock = executor, cost, clock
        self.traffic_log = traffic_log
        self.rng = rng or random.Random()
        self.stats = stats or EvaluationStats()
        self._spends: dict[str, DailySpend] = {}
        self._priced_for: dict[str, tuple[str | None, ...]] = {}
        self.reconfigure(settings, router)
        self.queue: asyncio.Queue[_Job] = asyncio.Queue(settings.queue_size)
        self._workers: list[asyncio.Task[None]] = []
        self._busy = 0

    def reconfigure(self, settings: EvaluationSettings, router: Router) -> None:
        """Evaluators, judge and shadow from ``settings``, scores to ``router`` (also on a reload;
        the queue and its workers stay, so answers already queued are still evaluated)."""
        evaluators = builtin_evaluators(settings.builtin, settings.refusal_patterns)
        evaluators += [load_plugin(path) for path in settings.plugins]  # may raise: nothing changed yet
        judge = settings.judge
        self.settings, self.router, self.evaluators = settings, router, evaluators
        spend = self._spend("judge", judge.daily_usd, (judge.model, *judge.fallbacks))
        self.judge = (
            Judge(judge, self.executor, self.cost, clock=self.clock, spend=spend) if judge.model else None
        )
        self.shadow_spend = self._spend("shadow", settings.shadow.daily_usd, tuple(settings.shadow.models))
        # Exploration by shadow: the router hands its exploratory picks over while both budgets
        # last (a shadow nobody can judge teaches nothing).
        explore = settings.enabled and settings.shadow.explore and self.judge is not None
        router.shadow_gate = self._shadows_allowed if explore else None

    def _spend(self, name: str, cap_usd: float, models: tuple[str | None, ...]) -> DailySpend:
        """The day's spend for ``name`` under ``cap_usd``: a reload changes the cap, not what was
        spent today or is held by calls in flight (they settle into the same account); when it
        changes the ``models`` called, what a call typically costs is learned again."""
        spend = self._spends.get(name)
        if spend is None:
            spend = self._spends[name] = DailySpend(cap_usd, self.clock)
        elif self._priced_for.get(name) != models:
            spend.reprice()
        self._priced_for[name] = models
        spend.cap_usd = cap_usd
        return spend

    def _shadows_allowed(self) -> bool:
        assert self.judge is not None
        return self.shadow_spend.allows() and self.judge.spend.allows()

    # --- the hook (on the request's path: constant time, never raises) -------------------------

    def accounted(self, call: Call) -> None:
        completion, decision = call.completion, call.decision
        if call.outcome != "ok" or completion is None or decision is None:
            return
        judge = self.judge is not None and self.rng.random() < self.settings.judge.sample_rate
        explore = decision.shadow is not None and completion.model_id != decision.shadow
        if explore:
            self.stats.count("shadow", "explore")
        sampled = self.settings.shadow.enabled and self.rng.random() < self.settings.shadow.sample_rate
        shadow = explore or sampled
        if not (self.evaluators or judge or shadow):
            return
        try:
            self.queue.put_nowait(_Job(call, judge, shadow))
        except asyncio.QueueFull:
            self.stats.count("queue", "dropped")

    # --- the workers ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._workers = [
            asyncio.create_task(self._work(), name=f"evaluation-{i}") for i in range(self.settings.workers)
        ]

    async def stop(self) -> None:
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing being evaluated (for tests and a graceful close)."""
        return self.queue.empty() and self._busy == 0

    async def _work(self) -> None:
        while True:
            job = await self.queue.get()
            self._busy += 1
            try:
                await asyncio.sleep(0)  # the request that queued it goes on to send its answer first
                await self.run(job)
            except Exception:  # a worker must outlive any one evaluation
                self.stats.count("worker", "error")
                log.exception("evaluation of %s failed", job.call.decision)
            finally:
                self._busy -= 1

    async def run(self, job: _Job) -> None:
        """Every evaluator, then the judge and the shadow when this answer was sampled for them."""
        call = job.call
        assert call.decision is not None and call.completion is not None
        decision, sample = call.decision, sample_of(call, call.completion)
        for evaluator in self.evaluators:
            await self._evaluate(evaluator, decision, sample)
        chosen: float | None = None
        if self.judge is not None and (job.judge or job.shadow):
            chosen = await self._judged(decision, sample)
        if job.shadow:
            await self._shadow(decision, sample, chosen)

    async def _evaluate(self, evaluator: Evaluator, decision: Decision, sample: Sample) -> None:
        name = _name(evaluator)
        try:
            score = evaluator.evaluate(sample)
            if inspect.isawaitable(score):
                score = await asyncio.wait_for(score, self.settings.timeout_s)
            if score is not None and not 0.0 <= float(score) <= 1.0:
                raise ValueError(f"score {score!r} is outside [0, 1]")
        except TimeoutError:
            self.stats.count(name, "timeout")
            return
        except Exception as exc:  # foreign code: count it and move on, the answer is long gone
            self.stats.count(name, "error")
            log.warning("evaluator %s failed on %s: %r", name, sample.request_id, exc)
            return
        if score is None:
            self.stats.count(name, "silent")
            return
        self.stats.count(name, "scored")
        self._feed(decision, sample, name, float(score))

    async def _judged(self, decision: Decision, sample: Sample) -> float | None:
        assert self.judge is not None
        outcome, score = await self.judge.score(decision, sample)
        self.stats.count("judge", outcome)
        if score is not None:
            self._feed(decision, sample, "judge", score, self.settings.judge.weight)
        return score

    def _feed(
        self, decision: Decision, sample: Sample, name: str, score: float, weight: float | None = None
    ) -> None:
        """A score as feedback for the model that answered, in the request's cell; and logged."""
        weight = self.settings.weights.get(name, 1.0) if weight is None else weight
        row = self.router.catalogue.index.get(sample.model)
        if row is not None and weight > 0:
            self.router.learner.feedback(row, decision.profile.cell, self.router.clock(), score, weight)
        if self.traffic_log is not None:
            self.traffic_log.log_record(
                evaluation_record(sample.request_id, sample.model, name, score, weight)
            )

    # --- shadows -------------------------------------------------------------------------------

    async def _shadow(self, decision: Decision, sample: Sample, chosen: float | None) -> None:
        """The same request to a second model; both judged; the pair logged as a preference."""
        second = self._second_model(decision, sample.model)
        if second is None:
            self.stats.count("shadow", "no_second_model")
            return
        held = self.shadow_spend.reserve()
        if held is None:
            self.stats.count("shadow", "budget")
            return
        completion = None
        try:
            completion = await self._shadow_answer(decision, sample, second)
        finally:
            self.shadow_spend.settle(held, None if completion is None else self.cost(completion))
        if completion is None:
            return
        other = replace(
            sample,
            request_id=f"{sample.request_id}~shadow",
            model=second,
            text=answer_text(completion),
            finish_reason=completion.finish_reason,
            tool_calls=has_tool_calls(completion),
            streamed=False,
        )
        for evaluator in self.evaluators:
            await self._evaluate(evaluator, decision, other)
        score = await self._judged(decision, other)
        if score is None or chosen is None:
            self.stats.count("shadow", "unjudged")
            return
        self.stats.count("shadow", "ok")
        if score != chosen and self.traffic_log is not None:
            pair = (sample, chosen, other, score) if chosen > score else (other, score, sample, chosen)
            tl = self.traffic_log
            record = preference_record(
                *pair, request_id=sample.request_id, prompts=tl.include_prompts, answers=tl.include_answers
            )
            tl.log_record(record)

    async def _shadow_answer(self, decision: Decision, sample: Sample, second: str) -> Completion | None:
        body = {k: v for k, v in sample.body.items() if k not in ("stream", "stream_options")}
        side = side_decision(decision, f"{decision.request_id}~shadow", [second], "shadow")
        timeout = self.settings.shadow.timeout_s
        try:
            result = await asyncio.wait_for(self.executor.complete(side, body, timeout), timeout + 1.0)
        except TimeoutError:
            self.stats.count("shadow", "timeout")
            return None
        if result.completion is None:
            self.stats.count("shadow", "timeout" if result.all_timed_out else "error")
        return result.completion

    def _second_model(self, decision: Decision, answered: str) -> str | None:
        """The policy's exploratory pick (``shadow.explore``), else a configured shadow model (at
        random), else the decision's best other candidate."""
        index, available = self.router.catalogue.index, self.router.available
        if decision.shadow is not None and decision.shadow != answered:
            return decision.shadow
        pool = self.settings.shadow.models or decision.chain
        usable = [m for m in pool if m != answered and (m not in index or available[index[m]])]
        if not usable:
            return None
        return self.rng.choice(usable) if self.settings.shadow.models else usable[0]
