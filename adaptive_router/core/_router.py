"""The ``Router`` facade: decide, record, feedback.

    router = Router.from_settings(load_settings())
    decision = router.decide(RouteRequest(prompt="Write a haiku", mode="speed"))
    decision.model, decision.fallbacks, decision.reason
    router.record(decision, Outcome(model=decision.model, success=True, latency_s=0.8, ttft_s=0.3,
                                    completion_tokens=40))
    router.feedback(decision.request_id, 0.9)

A decision reads arrays held in memory and touches no network and no lock.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from .._errors import ConfigError, RequestError
from .._settings import DEFAULT_COST_REFERENCE_USD, Settings
from ._answers import Answered, AnsweredMemory, new_request_id
from ._buffers import ScoreBuffers
from ._catalogue import Catalogue, provider_groups
from ._constraints import required_bits, why_none
from ._decision import Decision, Outcome, Ranking, RouteRequest
from ._learning import Learner
from ._profile import Profile, Profiler
from ._requests import decision_key, fast_route, message_text, normalise_weights
from ._scoring import (
    CostScale,
    Greedy,
    LinearScale,
    LogScale,
    Policy,
    make_policy,
    normal_quantile,
)
from ._setup import catalogue_from_settings, cell_strength, profiler_from_settings, scales_from_settings
from ._sums import Estimates, LearnerConfig

__all__ = ["Router", "catalogue_from_settings", "provider_groups"]

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
_PRICE_FLOOR = 1e-15  # keeps log(cost) finite for free models (log cost scale); far below any scale
_GREEDY = Greedy()
_CACHEABLE_POLICIES = frozenset({"greedy"})  # every other policy explores: never reuse its choice
_DECISION_CACHE_SIZE = 4096
_SMALL_SORT = 16  # NumPy's sort uses insertion sort (stable) below this many elements


@dataclass
class RouterConfig:
    """The plain values a Router runs on (built from ``Settings`` or by hand in tests)."""

    modes: Mapping[str, tuple[float, float, float]]
    default_weights: tuple[float, float, float] = (0.4, 0.3, 0.3)
    fallback_models: Sequence[str] = ()
    top_k: int = 4
    latency_quantile: float = 0.9
    latency_scale: LogScale = field(default_factory=lambda: LogScale(0.01, 120.0))
    cost_scale: CostScale = field(default_factory=lambda: LinearScale(DEFAULT_COST_REFERENCE_USD))
    feedback_memory: int = 100_000
    decision_ttl_s: float = 0.0  # reuse a deterministic decision for the same key this long (0: never)
    allow: Sequence[str] = ()  # routing.allow: globs of ids that may be used (empty: all)
    deny: Sequence[str] = ()  # routing.deny: globs never used
    token_prior_strength: float = 5.0  # answers behind a cell's configured expected output length


class Router:
    """Picks a model per request and learns from outcomes. Not thread-safe; one per event loop."""

    def __init__(
        self,
        catalogue: Catalogue,
        config: RouterConfig,
        profiler: Profiler,
        learner: Learner,
        policy: Policy,
        *,
        rng: np.random.Generator | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.catalogue = catalogue
        self.config = config
        self.profiler = profiler
        self.learner = learner
        self.policy = policy
        self.rng = rng if rng is not None else np.random.default_rng()
        self.clock = clock
        n = len(catalogue)
        # Rows the settings permit (allow/deny, and served by a provider when routes are given
        # to from_settings); breakers clear and set rows of ``available`` within these.
        self.permitted = np.ones(n, dtype=np.bool_)
        if config.allow:
            self.permitted &= catalogue.glob_mask(tuple(config.allow))
        if config.deny:
            self.permitted &= ~catalogue.glob_mask(tuple(config.deny))
        self.available = self.permitted.copy()
        self._buf = ScoreBuffers(n, config.latency_scale, config.cost_scale)
        self._price_prompt = np.maximum(catalogue.price_prompt, _PRICE_FLOOR)
        self._price_completion = np.maximum(catalogue.price_completion, _PRICE_FLOOR)
        # What every model allows, so that a constraint no model can fail skips its pass:
        # the smallest context window and answer limit, the highest prices (NaN: never skip).
        self._min_context = int(catalogue.context_length.min())  # a catalogue has a model at least
        self._min_output = float(catalogue.max_output_tokens.min())
        self._top_prices = (float(catalogue.price_prompt.max()), float(catalogue.price_completion.max()))
        # Answered requests for ``feedback`` (library use); None in the service, whose
        # FeedbackStore owns them (with their answer ids and owners, and in Redis).
        self.answers: AnsweredMemory | None = AnsweredMemory(config.feedback_memory)
        self._capability_masks: dict[frozenset[str], BoolArray] = {}
        self._decisions: dict[tuple[Any, ...], tuple[float, Decision]] = {}
        self._available_version = 0
        self._fallback_rows = [catalogue.index[m] for m in config.fallback_models if m in catalogue]
        # Exploration by shadow (``evaluation.shadow.explore``): while this says yes, a pick the
        # policy made to explore does not answer; the best-scoring model does, and the pick is
        # the decision's ``shadow`` (sent beside it and judged). None: the pick answers.
        self.shadow_gate: Callable[[], bool] | None = None

    def restrict(self, routable: BoolArray) -> None:
        """Only ``routable`` rows may be chosen (models some configured provider serves)."""
        self.permitted &= routable
        self.available &= routable
        self._available_version += 1

    @classmethod
    def from_settings(
        cls, settings: Settings, catalogue: Catalogue | None = None, *, clock: Callable[[], float] = time.time
    ) -> Router:
        """The router ``settings`` describe. Models no configured provider serves are never
        ranked; a ``routing.fallback_models`` id that cannot be routed is a ``ConfigError``."""
        if catalogue is None:
            catalogue = catalogue_from_settings(settings)
        routing, learning, exploration = settings.routing, settings.learning, settings.exploration
        latency_scale, cost_scale = scales_from_settings(routing)
        config = RouterConfig(
            modes={name: w.normalised() for name, w in routing.modes.items()},
            default_weights=routing.default_weights.normalised(),
            fallback_models=routing.fallback_models,
            top_k=routing.top_k,
            latency_quantile=routing.latency_quantile,
            latency_scale=latency_scale,
            cost_scale=cost_scale,
            feedback_memory=learning.feedback_memory,
            decision_ttl_s=settings.cache.decision_ttl_seconds if settings.cache.enabled else 0.0,
            allow=tuple(routing.allow),
            deny=tuple(routing.deny),
            token_prior_strength=learning.prior_strength,
        )
        profiler = profiler_from_settings(settings)
        difficulty = learning.cell_difficulty
        groups = provider_groups(catalogue, settings.routes())
        learner = Learner(
            catalogue.ids,
            profiler.cells,
            catalogue.ttft_prior,
            catalogue.tpot_prior,
            catalogue.quality_prior,
            groups=np.maximum(groups, 0),
            t0=clock(),
            config=LearnerConfig(
                latency_half_life_s=learning.latency_half_life_s,
                quality_half_life_s=learning.quality_half_life_s,
                calibration_half_life_s=learning.calibration_half_life_s,
                prior_strength=learning.prior_strength,
                calibration_strength=learning.calibration_strength,
                latency_prior_strength=learning.latency_prior_strength,
                latency_log_sd_prior=learning.latency_log_sd_prior,
                success_prior=learning.success_prior,
                refresh_interval_s=learning.refresh_interval_s,
                surprise_z=learning.surprise_z,
                surprise_forget=learning.surprise_forget,
                latency_z=normal_quantile(routing.latency_quantile),
                stale_after=learning.stale_after,
            ),
            cell_levels=None if profiler.levels is None else profiler.levels.with_difficulty(difficulty),
            cell_prior_strength=cell_strength(learning.cell_prior_strength),
        )
        policy = make_policy(
            exploration.policy,
            exploration.ucb_c,
            exploration.temperature,
            config.latency_scale.inv_range,
            exploration.recheck_after,
        )
        router = cls(
            catalogue,
            config,
            profiler,
            learner,
            policy,
            rng=np.random.default_rng(exploration.seed),
            clock=clock,
        )
        router.restrict(groups >= 0)
        router.check_fallbacks()
        return router

    def check_fallbacks(self) -> None:
        """Every ``fallback_models`` id must be a model the router may route to."""
        for model in self.config.fallback_models:
            row = self.catalogue.index.get(model)
            if row is None or not self.permitted[row]:
                why = "is not in the catalogue" if row is None else "is denied or served by no provider"
                raise ConfigError(
                    "routing.fallback_models",
                    f"{model!r} {why}; list routable ids (declare local models under "
                    "catalogue.models), or []",
                )

    # --- deciding -------------------------------------------------------------------------

    def weights_for(
        self, mode: str | None, weights: tuple[float, float, float] | None
    ) -> tuple[str, tuple[float, float, float]]:
        if weights is not None:
            return "custom", normalise_weights(weights)
        if mode is None or mode == "default":
            return "default", self.config.default_weights
        try:
            return mode, self.config.modes[mode]
        except KeyError:
            known = ", ".join(["default", *self.config.modes])
            raise RequestError("mode", f"unknown priority mode {mode!r}; known: {known}") from None

    def decide(self, request: RouteRequest, *, shadows: bool = True) -> Decision:
        """Rank the eligible models for ``request``; raise ``NoEligibleModel`` if there are none.

        ``shadows``: an exploratory pick may become the decision's ``shadow`` while
        ``shadow_gate`` allows (false for a caller that will not send it, e.g. ``POST /route``).

        With ``decision_ttl_s`` set and the greedy policy (every other policy explores, and a
        cached exploration would only repeat itself), a decision is reused for requests with the
        same mode, weights, profile cell, length bucket and constraints for that long; a breaker
        opening or closing invalidates what was cached.
        """
        if self.config.decision_ttl_s <= 0 or self.policy.name not in _CACHEABLE_POLICIES:
            return self._decide(request, self.policy, self.config.top_k, shadows=shadows)
        profile = self.profile(request)  # the key needs it; the miss below reuses it
        request = fast_route(request, profile)
        key = decision_key(request, profile, self._available_version)
        now = self.clock()
        hit = self._decisions.get(key)
        if hit is not None and hit[0] > now:
            return hit[1].reissued(request.request_id or self._new_id(), profile)
        decision = self._decide(request, self.policy, self.config.top_k, profile)
        if len(self._decisions) >= _DECISION_CACHE_SIZE:
            self._decisions.clear()  # bounded; entries live a second or so anyway
        self._decisions[key] = (now + self.config.decision_ttl_s, decision)
        return decision

    def rank(self, request: RouteRequest) -> Decision:
        """Every eligible model, best first, by the greedy score (no exploration): for display."""
        return self._decide(request, _GREEDY, len(self.catalogue))

    def _decide(
        self,
        request: RouteRequest,
        policy: Policy,
        top_k: int,
        profile: Profile | None = None,
        *,
        shadows: bool = False,
    ) -> Decision:
        started = time.perf_counter()
        if profile is None:
            profile = self.profile(request)
        request = fast_route(request, profile)
        mode, weights = self.weights_for(request.mode, request.weights)
        est = self.learner.estimates(self.clock())
        out_tokens = self.expected_tokens(est, profile, request.max_tokens)
        score = self._score(est, profile, weights, out_tokens)
        mask = self._eligible(request, profile, est, out_tokens)
        eligible = int(np.count_nonzero(mask))
        if eligible == 0:
            raise why_none(
                self.catalogue,
                self.available,
                request,
                profile,
                est,
                latency_q=self.latency_quantile(est, out_tokens),
                cost=self.cost_bound(profile, request.max_tokens, out_tokens),
                out_tokens=out_tokens,
                quantile=self.config.latency_quantile,
            )
        np.putmask(score, np.logical_not(mask, out=self._buf.mask2), -np.inf)
        gate = shadows and self.shadow_gate is not None and self.shadow_gate()
        if hasattr(policy, "judged"):  # an exploratory pick's quality is judged for certain beside it
            policy.judged = gate
        choice = policy.choose(score, est, profile.cell, weights, self.rng)
        pinned = self._pinned_row(request.model, mask)
        ranked = self._ranked(score, eligible, top_k)
        head = choice.index if pinned is None else pinned
        propensity = choice.propensity if pinned is None else 1.0
        shadow: str | None = None
        if pinned is None and gate:
            propensity = 1.0  # the best-scoring model answers, whatever the policy drew
            if score[head] < score[ranked[0]]:  # the policy explored (a tie is no exploration)
                shadow, head = self.catalogue.ids[head], ranked[0]  # beside the answer, not in it
        rows = [head, *[r for r in ranked if r != head][: top_k - 1]] if request.fallback else [head]
        ids = self.catalogue.ids
        chain = [ids[r] for r in rows] + self._closing(rows, mask) * request.fallback
        taken = self._buf.block.take(rows, axis=1)  # score, latency, cost, logs, value: one copy
        ranking = Ranking(
            ids=chain[: len(rows)],
            terms=taken[:3],
            value=taken[5],
            bonus=choice.bonus.take(rows) if choice.bonus is not None else None,
            offset=self._offset(weights),
            weights=weights,
            scales=(self.config.latency_scale, self.config.cost_scale),
        )
        return Decision(
            request_id=request.request_id or self._new_id(),
            chain=chain,
            propensity=propensity,
            policy=policy.name,
            explored=pinned is None and head != ranked[0],
            profile=profile,
            mode=mode,
            weights=weights,
            eligible=eligible,
            requested=request.model,
            pinned=pinned is not None,
            ranking=ranking,
            decision_us=(time.perf_counter() - started) * 1e6,
            shadow=shadow,
        )

    def expected_tokens(self, est: Estimates, profile: Profile, max_tokens: int | None) -> float:
        """How long the answer is expected to be: the cell's configured length, moved toward the
        lengths its answers really had, capped by ``max_tokens``."""
        k, cell = self.config.token_prior_strength, profile.cell
        expected = (k * profile.expected_output_tokens + float(est.tokens_sum[cell])) / (
            k + float(est.tokens_weight[cell])
        )
        return min(expected, float(max_tokens)) if max_tokens is not None else expected

    def _new_id(self) -> str:
        return new_request_id()

    def profile(self, request: RouteRequest) -> Profile:
        if request.messages is not None:
            text, chars = message_text(request.messages)
        elif request.prompt is not None:
            text, chars = request.prompt, len(request.prompt)
        else:
            raise RequestError("messages", "a request needs messages or a prompt")
        return self.profiler.profile(text, chars, request.max_tokens)

    def _score(
        self, est: Estimates, profile: Profile, weights: tuple[float, float, float], out: float
    ) -> FloatArray:
        """Fill the score buffer, less a constant that does not change the ranking.

        Latency and cost sit in adjacent rows, so the log and the clipping run once over both;
        the weighted sum of the three terms is one dot product.
        """
        b = self._buf
        np.multiply(est.tpot, out, out=b.lat)
        b.lat += est.ttft
        np.multiply(self._price_completion, out, out=b.cost)
        np.multiply(self._price_prompt, float(profile.prompt_tokens), out=b.tmp)
        b.cost += b.tmp
        if b.cost_linear:  # dollars as they are; only latency is a clipped log
            logs = b.logs[:1]
            np.log(b.terms[1:2], out=logs)
            b.logs[1] = b.cost  # the coefficient carries 1 / reference
        else:
            logs = b.logs[:2]
            np.log(b.terms[1:], out=logs)
        np.maximum(logs, b.log_low, out=logs)
        np.minimum(logs, b.log_high, out=logs)
        b.logs[2] = est.value[profile.cell]
        np.dot(b.coefficients(weights), b.logs, out=b.score)
        score: FloatArray = b.score
        return score

    def _offset(self, weights: tuple[float, float, float]) -> float:
        """The constant ``_score`` leaves out: each term's ``1 + origin * inv_range``."""
        ls, cs = self.config.latency_scale, self.config.cost_scale
        return weights[0] * (1 + ls.log_low * ls.inv_range) + weights[1] * (1 + cs.origin * cs.inv_range)

    def _eligible(self, request: RouteRequest, profile: Profile, est: Estimates, out: float) -> BoolArray:
        """The rows ``request`` may use. A pass that no model can fail (a prompt within every
        context window, a cost cap above the dearest model's bound) is skipped: same mask."""
        mask, cat, b = self._buf.mask, self.catalogue, self._buf  # scratch: no allocation
        need = profile.prompt_tokens + (request.max_tokens or 0)
        if need > self._min_context:
            np.less_equal(need, cat.context_length, out=mask)
            mask &= self.available
        else:
            np.copyto(mask, self.available)
        if request.mask is not None:
            mask &= request.mask
        if request.max_tokens is not None and request.max_tokens > self._min_output:
            np.greater_equal(cat.max_output_tokens, request.max_tokens, out=b.mask2)
            mask &= b.mask2
        if request.capabilities:
            mask &= self._capability_mask(request.capabilities)
        if request.allow:
            mask &= cat.glob_mask(request.allow)
        if request.deny:
            mask &= ~cat.glob_mask(request.deny)
        if request.max_latency_ms is not None:
            np.less_equal(
                self.latency_quantile(est, out, b.tmp), request.max_latency_ms / 1000.0, out=b.mask2
            )
            mask &= b.mask2
        if request.max_ttft_ms is not None:
            np.less_equal(est.ttft_q, request.max_ttft_ms / 1000.0, out=b.mask2)
            mask &= b.mask2
        cap = request.max_cost_usd
        if cap is not None and not self._under_cost_cap(profile, request.max_tokens, out, cap):
            bound = self.cost_bound(profile, request.max_tokens, out, b.tmp, b.tmp2)
            np.less_equal(bound, cap, out=b.mask2)
            mask &= b.mask2
        return mask

    def _under_cost_cap(self, profile: Profile, max_tokens: int | None, out: float, cap: float) -> bool:
        """Whether every model's ``cost_bound`` is within ``cap``: the same products and sum at the
        highest prices, which IEEE rounding keeps at or above each model's own."""
        answer = float(max_tokens) if max_tokens is not None else out
        prompt_price, completion_price = self._top_prices
        return completion_price * answer + prompt_price * float(profile.prompt_tokens) <= cap

    def _capability_mask(self, capabilities: frozenset[str]) -> BoolArray:
        """Rows having every one of ``capabilities``; depends on the catalogue only, so kept."""
        mask = self._capability_masks.get(capabilities)
        if mask is None:
            bits = required_bits(capabilities)
            mask = (self.catalogue.capabilities & bits) == bits
            self._capability_masks[capabilities] = mask
        return mask

    def latency_quantile(
        self, est: Estimates, out_tokens: float, out: FloatArray | None = None
    ) -> FloatArray:
        """A high quantile (``routing.latency_quantile``) of each model's latency, in seconds
        (written into ``out`` when given: the decision path passes a scratch buffer)."""
        result: FloatArray = np.multiply(est.tpot_q, out_tokens, out=out)
        result += est.ttft_q
        return result

    def cost_bound(
        self,
        profile: Profile,
        max_tokens: int | None,
        out_tokens: float,
        out: FloatArray | None = None,
        scratch: FloatArray | None = None,
    ) -> FloatArray:
        """Cost if the answer runs to ``max_tokens`` (or the expected length when unset), USD."""
        cat = self.catalogue
        answer = float(max_tokens) if max_tokens is not None else out_tokens
        result: FloatArray = np.multiply(cat.price_completion, answer, out=out)
        result += np.multiply(cat.price_prompt, float(profile.prompt_tokens), out=scratch)
        return result

    def _pinned_row(self, model: str | None, mask: BoolArray) -> int | None:
        """The client's own model leads the chain when it is eligible (breaker closed, fits)."""
        if model is None:
            return None
        row = self.catalogue.index.get(model)
        if row is None:
            raise RequestError("model", f"model {model!r} is not in the catalogue; use 'auto' to route")
        return row if mask[row] else None

    def _ranked(self, score: FloatArray, eligible: int, top_k: int) -> list[int]:
        """The best ``top_k + 1`` eligible rows by score (greedy order), best first."""
        n = score.shape[0]
        k = min(top_k + 1, eligible)
        if k >= n:
            top = score.argsort()[::-1][:k]
        else:  # the methods: np.argpartition's Python wrapper costs as much as the partition
            part = score.argpartition(n - k)[n - k :]
            if k <= _SMALL_SORT:
                # NumPy sorts so few by insertion (stable): the same order, in Python floats.
                ranked: list[int] = sorted(part.tolist(), key=score.item)
                ranked.reverse()
                return ranked
            top = part[score[part].argsort()[::-1]]
        ranked = top.tolist()
        return ranked

    def _closing(self, rows: list[int], mask: BoolArray) -> list[str]:
        """``routing.fallback_models`` close the chain, where they meet the request's constraints."""
        return [self.catalogue.ids[r] for r in self._fallback_rows if r not in rows and mask[r]]

    def model_table(self, mode: str | None, prompt: str = "Hello, how are you?") -> list[dict[str, Any]]:
        """Every model's score terms and estimates for a typical short request, best first."""
        decision = self.rank(RouteRequest(prompt=prompt, mode=mode))
        est = self.learner.estimates(self.clock())
        cat = self.catalogue
        rows = []
        for rank, c in enumerate(decision.candidates, start=1):
            i = cat.index[c.model]
            rows.append(
                {
                    "rank": rank,
                    "model": c.model,
                    "mode": decision.mode,
                    "score": round(c.score, 4),
                    "latency": round(c.latency_term, 4),
                    "cost": round(c.cost_term, 4),
                    "quality": round(c.quality_term, 4),
                    "est_latency_ms": round(c.latency_s * 1000, 1),
                    "est_cost_usd": float(f"{c.cost_usd:.3g}"),
                    "quality_est": round(c.quality, 3),
                    "success": round(float(est.success[i]), 3),
                    "ttft_ms": round(float(est.ttft[i]) * 1000, 1),
                    "tpot_ms": round(float(est.tpot[i]) * 1000, 2),
                    "evidence": round(float(est.latency_evidence[i]), 1),
                    "prompt_per_m": round(float(cat.price_prompt[i]) * 1e6, 4),
                    "completion_per_m": round(float(cat.price_completion[i]) * 1e6, 4),
                    "context": int(cat.context_length[i]),
                    "capabilities": sorted(cat.models[i].capabilities),
                }
            )
        return rows

    # --- learning ---------------------------------------------------------------------------

    def record(self, decision: Decision, outcome: Outcome) -> None:
        """Learn from one attempt (call once per attempt, failed ones included)."""
        row = self.catalogue.index.get(outcome.model)
        if row is None:
            return
        cell = decision.profile.cell
        self.learner.observe(
            row,
            cell,
            self.clock(),
            outcome.success,
            outcome.ttft_s,
            latency_s=outcome.latency_s,
            tokens=outcome.completion_tokens,
        )
        if outcome.success and self.answers is not None:
            self.answers.keep(Answered(decision.request_id, None, outcome.model, cell, ""))

    def feedback(self, request_id: str, score: float) -> bool:
        """A quality score in [0, 1] for an answered request; False if the id is unknown or expired."""
        held = self.answers.find(request_id, "") if self.answers is not None else None
        return self.feedback_on(held.model if held else "", held.cell if held else -1, score)

    def feedback_on(self, model: str, cell: int, score: float) -> bool:
        """A quality score in [0, 1] for an answer of ``model`` in learner cell ``cell`` (a request
        remembered elsewhere, e.g. by another replica); False if either is unknown here."""
        if not 0.0 <= score <= 1.0 or math.isnan(score):
            raise RequestError("score", f"must be in [0, 1], got {score!r}")
        row = self.catalogue.index.get(model)
        if row is None or not 0 <= cell < len(self.profiler.cells):
            return False
        self.learner.feedback(row, cell, self.clock(), score)
        return True

    def set_available(self, model: str, available: bool) -> None:
        row = self.catalogue.index[model]
        available = available and bool(self.permitted[row])
        if self.available[row] != available:
            self.available[row] = available
            self._available_version += 1  # cached decisions made before no longer hold
