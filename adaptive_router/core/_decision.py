"""What a decision is: the request the router sees, the ranked chain it chose, what happened.

``RouteRequest`` goes in, ``Decision`` comes out (the chain, the propensity, and an explanation
built only when read), ``Outcome`` reports one attempt back to ``Router.record``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import numpy.typing as npt

from ._profile import Profile
from ._scoring import CostScale, LogScale

__all__ = ["Candidate", "Decision", "Outcome", "RouteRequest"]

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(slots=True)
class RouteRequest:
    """What the router needs to know about one request. Either ``messages`` or ``prompt``."""

    messages: Sequence[Mapping[str, Any]] | None = None
    prompt: str | None = None
    max_tokens: int | None = None
    mode: str | None = None
    weights: tuple[float, float, float] | None = None
    max_latency_ms: float | None = None
    max_ttft_ms: float | None = None
    max_cost_usd: float | None = None
    capabilities: frozenset[str] = frozenset()
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    model: str | None = None
    fallback: bool = True
    request_id: str | None = None
    mask: BoolArray | None = None  # rows this request may use (e.g. a budget's price ceiling)


@dataclass(slots=True)
class Candidate:
    """One ranked model with the terms of its score (each already weighted)."""

    model: str
    score: float
    latency_term: float
    cost_term: float
    quality_term: float
    exploration: float
    latency_s: float
    cost_usd: float
    quality: float


@dataclass(slots=True)
class Ranking:
    """The raw numbers behind a decision's chain, turned into ``Candidate`` rows on demand.

    Explaining a decision costs more than making it, and most callers (the proxy) only need
    the chain: so the explanation is materialised the first time someone reads it.
    """

    ids: list[str]
    terms: FloatArray  # (3, k): score less its constant, latency s, cost USD; for each chain row
    value: FloatArray  # (k,) expected quality times success
    bonus: FloatArray | None  # (k,) exploration term (None: none)
    offset: float
    weights: tuple[float, float, float]
    scales: tuple[LogScale, CostScale]

    def candidates(self) -> list[Candidate]:
        score, lat, cost = self.terms.tolist()
        bonus = self.bonus.tolist() if self.bonus is not None else [0.0] * len(self.ids)
        value = self.value.tolist()
        return [
            self._candidate(i, score[i], lat[i], cost[i], value[i], bonus[i]) for i in range(len(self.ids))
        ]

    def first(self, i: int = 0) -> Candidate:
        """Row ``i`` of the chain alone (``Decision.reason`` reads the head and the runner-up)."""
        score, lat, cost = self.terms[:, i].tolist()
        bonus = self.bonus.item(i) if self.bonus is not None else 0.0
        return self._candidate(i, score, lat, cost, self.value.item(i), bonus)

    def _candidate(
        self, i: int, score: float, lat: float, cost: float, value: float, bonus: float
    ) -> Candidate:
        (wl, wc, wq), (ls, cs) = self.weights, self.scales
        return Candidate(
            model=self.ids[i],
            score=score + self.offset + bonus,
            latency_term=wl * (1.0 - ls.norm(lat)),
            cost_term=wc * (1.0 - cs.norm(cost)),
            quality_term=wq * value,
            exploration=bonus,
            latency_s=lat,
            cost_usd=cost,
            quality=value,
        )


class Decision:
    """The chosen model, the fallback order, and why. ``candidates`` and ``reason`` are lazy."""

    __slots__ = (
        "_candidates",
        "_ranking",
        "cached",
        "decision_us",
        "eligible",
        "explored",
        "fallbacks",
        "mode",
        "model",
        "pinned",
        "policy",
        "profile",
        "propensity",
        "request_id",
        "requested",
        "shadow",
        "weights",
    )

    def __init__(
        self,
        *,
        request_id: str,
        chain: list[str],
        propensity: float | None,
        policy: str,
        explored: bool,
        profile: Profile,
        mode: str,
        weights: tuple[float, float, float],
        eligible: int,
        requested: str | None,
        pinned: bool,
        ranking: Ranking,
        decision_us: float = 0.0,
        shadow: str | None = None,
    ) -> None:
        self.request_id = request_id
        self.model = chain[0]
        self.fallbacks = chain[1:]
        self.propensity = propensity
        self.policy = policy
        self.explored = explored
        self.profile = profile
        self.mode = mode
        self.weights = weights
        self.eligible = eligible
        self.requested = requested
        self.pinned = pinned
        self.decision_us = decision_us
        self.shadow = shadow  # the policy's exploratory pick, to send beside the answer (shadow.explore)
        self.cached = False  # True when reissued from the decision cache
        self._ranking = ranking
        self._candidates: list[Candidate] | None = None

    def __repr__(self) -> str:
        return f"<Decision {self.model} then {self.fallbacks} ({self.mode}, {self.policy})>"

    @property
    def chain(self) -> list[str]:
        return [self.model, *self.fallbacks]

    def reissued(self, request_id: str, profile: Profile) -> Decision:
        """The same decision for another request (the decision cache's hit), decided in 0 us."""
        twin = Decision(
            request_id=request_id,
            chain=self.chain,
            propensity=self.propensity,
            policy=self.policy,
            explored=False,
            profile=profile,
            mode=self.mode,
            weights=self.weights,
            eligible=self.eligible,
            requested=self.requested,
            pinned=self.pinned,
            ranking=self._ranking,
            decision_us=0.0,
        )
        twin.cached = True
        return twin

    @property
    def scales(self) -> tuple[LogScale, CostScale]:
        """The latency and cost scales the terms were read on (the traffic log records the cost one)."""
        return self._ranking.scales

    @property
    def candidates(self) -> list[Candidate]:
        """The ranked models of the chain with the weighted terms of their scores."""
        if self._candidates is None:
            self._candidates = self._ranking.candidates()
        return self._candidates

    @property
    def reason(self) -> str:
        # The head alone when the explanation was not asked for (the routing object of an answer).
        best = self._candidates[0] if self._candidates is not None else self._ranking.first()
        if self.pinned:
            return f"{self.model} requested by the client; fallbacks ranked by {self.mode} score"
        prefix = f"{self.requested} is unavailable or does not fit the request; " if self.requested else ""
        terms = {"latency": best.latency_term, "cost": best.cost_term, "quality": best.quality_term}
        if len(self._ranking.ids) > 1:  # the term that puts it ahead of the runner-up the most
            second = self._candidates[1] if self._candidates is not None else self._ranking.first(1)
            terms["latency"] -= second.latency_term
            terms["cost"] -= second.cost_term
            terms["quality"] -= second.quality_term
            why = f"ahead of {second.model} on"
        else:
            why = "led by"
        lead = max(terms, key=lambda k: terms[k])
        text = (
            f"{prefix}{self.mode} mode: best score {best.score:.3f} of {self.eligible} eligible "
            f"(latency ~{best.latency_s * 1000:.0f} ms, cost ~${best.cost_usd:.6f}, "
            f"quality {best.quality:.2f}; {why} {lead})"
        )
        if self.explored:
            text += f"; explored by {self.policy} (bonus {best.exploration:+.3f})"
        return text

    def to_dict(self) -> dict[str, Any]:
        candidates = [_candidate_dict(c) for c in self.candidates]  # first: the reason reads them
        return {
            "request_id": self.request_id,
            "model": self.model,
            "fallbacks": self.fallbacks,
            "propensity": self.propensity,
            "policy": self.policy,
            "explored": self.explored,
            **({"shadow": self.shadow} if self.shadow is not None else {}),
            "reason": self.reason,
            "decision_us": round(self.decision_us, 2),
            "profile": {
                "task": self.profile.task,
                "prompt_tokens": self.profile.prompt_tokens,
                "bucket": self.profile.bucket,
                "cell": self.profile.cell_name,
                "expected_output_tokens": self.profile.expected_output_tokens,
                **({"fast_path": self.profile.route.name} if self.profile.route is not None else {}),
            },
            "mode": self.mode,
            "weights": dict(zip(("latency", "cost", "quality"), self.weights, strict=True)),
            "eligible": self.eligible,
            "candidates": candidates,
        }


def _candidate_dict(c: Candidate) -> dict[str, Any]:
    """``dataclasses.asdict(c)`` without its deep copy (every field is a str or a float)."""
    return {name: getattr(c, name) for name in _CANDIDATE_FIELDS}


_CANDIDATE_FIELDS = tuple(f.name for f in fields(Candidate))


@dataclass(slots=True)
class Outcome:
    """What happened on one attempt. ``ttft_s`` is known for streamed answers only."""

    model: str
    success: bool
    latency_s: float | None = None
    ttft_s: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost_usd: float | None = None
    error: str | None = None
