"""The routing core: catalogue, request profile, learning, scoring and the router. Pure: no I/O."""

from __future__ import annotations

from ._catalogue import (
    CAPABILITIES,
    Catalogue,
    Model,
    apply_overlay,
    fetch_openrouter,
    load_bundled,
    load_catalogue,
    load_openrouter,
)
from ._decision import Candidate, Decision, Outcome, RouteRequest
from ._learning import LATENCY_SUMS, SUM_NAMES, DecayedSums, Estimates, Learner, LearnerState, Surprise
from ._profile import CellMode, Profile, Profiler, TaskRules, estimate_tokens
from ._router import Router
from ._scoring import (
    POLICIES,
    Choice,
    Greedy,
    LogScale,
    Policy,
    Softmax,
    Thompson,
    Ucb,
    make_policy,
    normal_quantile,
    score_sd,
)

__all__ = [
    "CAPABILITIES",
    "LATENCY_SUMS",
    "POLICIES",
    "SUM_NAMES",
    "Candidate",
    "Catalogue",
    "CellMode",
    "Choice",
    "DecayedSums",
    "Decision",
    "Estimates",
    "Greedy",
    "Learner",
    "LearnerState",
    "LogScale",
    "Model",
    "Outcome",
    "Policy",
    "Profile",
    "Profiler",
    "RouteRequest",
    "Router",
    "Softmax",
    "Surprise",
    "TaskRules",
    "Thompson",
    "Ucb",
    "apply_overlay",
    "estimate_tokens",
    "fetch_openrouter",
    "load_bundled",
    "load_catalogue",
    "load_openrouter",
    "make_policy",
    "normal_quantile",
    "score_sd",
]
