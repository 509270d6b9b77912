"""In-process simulations of the learning loop: decide, observe a scripted world, record.

No HTTP and no sleeping: the clock is simulated, so thousands of requests take a fraction of
a second. Used by the learning tests and ``benchmarks/learning.py``.

    world = World.from_arrays(ids, ttft_s=[...], tpot_s=[...], quality=[...])
    trace = run(router, world, requests=3000, seconds_per_request=0.5, seed=1)
    trace.share(model, start=2000)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from ..core._decision import Outcome, RouteRequest
from ..core._router import Router

__all__ = ["LAB_IDS", "LAB_TRUTH", "SimClock", "Trace", "World", "lab", "run"]

# The "lab": six models the catalogue cannot tell apart (equal priors) whose truth differs, so
# only learning finds the best. Shared by the learning tests and benchmarks/learning.py.
LAB_IDS = [f"lab/m{i}" for i in range(6)]
LAB_TRUTH = {
    "ttft_s": [0.3, 0.5, 0.4, 0.8, 0.35, 0.6],
    "tpot_s": [0.015, 0.02, 0.012, 0.03, 0.025, 0.01],
    "quality": [0.55, 0.7, 0.8, 0.75, 0.6, 0.65],
}


class SimClock:
    """A clock the simulation moves by hand (inject it as the router's ``clock``)."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class World:
    """The truth the router cannot see: each model's latency, reliability and answer quality."""

    ids: list[str]
    ttft_s: npt.NDArray[np.float64]
    tpot_s: npt.NDArray[np.float64]
    quality: npt.NDArray[np.float64]
    success: npt.NDArray[np.float64]
    log_sd: float = 0.3
    output_tokens: int = 200

    @classmethod
    def from_arrays(
        cls,
        ids: Sequence[str],
        ttft_s: Sequence[float],
        tpot_s: Sequence[float],
        quality: Sequence[float],
        success: Sequence[float] | None = None,
        log_sd: float = 0.3,
        output_tokens: int = 200,
    ) -> World:
        n = len(ids)
        return cls(
            list(ids),
            np.asarray(ttft_s, float),
            np.asarray(tpot_s, float),
            np.asarray(quality, float),
            np.asarray(success if success is not None else [1.0] * n, float),
            log_sd,
            output_tokens,
        )

    def slow_down(self, model: str, factor: float) -> None:
        i = self.ids.index(model)
        self.ttft_s[i] *= factor
        self.tpot_s[i] *= factor

    def outcome(self, model: str, rng: np.random.Generator) -> tuple[Outcome, float | None]:
        """One attempt on ``model``: the outcome and, when it answered, a quality score drawn 0/1."""
        i = self.ids.index(model)
        if rng.random() >= self.success[i]:
            return Outcome(model=model, success=False, error="status_error"), None
        ttft = float(self.ttft_s[i] * math.exp(rng.normal(0.0, self.log_sd)))
        tpot = float(self.tpot_s[i] * math.exp(rng.normal(0.0, self.log_sd)))
        tokens = self.output_tokens
        latency = ttft + tpot * (tokens - 1)
        score = float(rng.random() < self.quality[i])
        return Outcome(
            model=model, success=True, latency_s=latency, ttft_s=ttft, completion_tokens=tokens
        ), score

    def expected_score(
        self, weights: tuple[float, float, float], router: Router, prompt_tokens: int
    ) -> list[float]:
        """Each model's true score under ``weights`` (the same normalisation as the router's)."""
        cfg, cat = router.config, router.catalogue
        scores = []
        for i, model in enumerate(self.ids):
            row = cat.index[model]
            latency = self.ttft_s[i] + self.tpot_s[i] * self.output_tokens
            cost = cat.price_prompt[row] * prompt_tokens + cat.price_completion[row] * self.output_tokens
            scores.append(
                weights[0] * (1 - cfg.latency_scale.norm(latency))
                + weights[1] * (1 - cfg.cost_scale.norm(max(cost, 1e-15)))
                + weights[2] * self.quality[i] * self.success[i]
            )
        return scores


@dataclass
class Trace:
    chosen: list[str] = field(default_factory=list)
    explored: list[bool] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)

    def share(self, model: str, start: int = 0, stop: int | None = None) -> float:
        window = self.chosen[start:stop]
        return sum(1 for m in window if m == model) / max(len(window), 1)


def run(
    router: Router,
    world: World,
    requests: int,
    clock: SimClock,
    seconds_per_request: float = 0.5,
    mode: str | None = None,
    feedback: bool = True,
    seed: int = 0,
    events: dict[int, Callable[[World], None]] | None = None,
) -> Trace:
    """Drive ``requests`` decisions through ``world``; ``events[i]`` runs before request ``i``."""
    rng = np.random.default_rng(seed)
    trace = Trace()
    request = RouteRequest(prompt="Tell me about the sea.", mode=mode, max_tokens=world.output_tokens)
    for i in range(requests):
        if events and i in events:
            events[i](world)
        decision = router.decide(request)
        outcome, score = world.outcome(decision.model, rng)
        router.record(decision, outcome)
        if feedback and score is not None:
            router.feedback(decision.request_id, score)
        trace.chosen.append(decision.model)
        trace.explored.append(decision.explored)
        trace.rewards.append(score if score is not None else 0.0)
        clock.advance(seconds_per_request)
    return trace


def lab(policy: str, seed: int) -> tuple[Router, SimClock, World]:
    """A router over the lab's six models (default settings but ``policy``), its clock, the truth."""
    from .._settings import load_settings
    from ..core._catalogue import Catalogue, Model

    models = [
        Model(
            id=i,
            price_prompt=1e-6,
            price_completion=2e-6,
            context_length=32_000,
            ttft_s=0.5,
            tpot_s=0.02,
            quality=0.6,
        )
        for i in LAB_IDS
    ]
    clock = SimClock()
    settings = load_settings(exploration={"policy": policy, "seed": seed})
    router = Router.from_settings(settings, Catalogue(models), clock=clock)
    truth = LAB_TRUTH
    return router, clock, World.from_arrays(LAB_IDS, truth["ttft_s"], truth["tpot_s"], truth["quality"])
