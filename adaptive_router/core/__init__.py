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
from ._hierarchy import Baseline, CellLevels, between_cell_strength, cell_baseline, shrunk_quality
from ._learning import Learner
from ._profile import CellMode, FastRoute, Profile, Profiler, TaskRules, estimate_tokens
from ._router import Router, catalogue_from_settings, provider_groups
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
from ._semantic import DEFAULT_TABLE, MAX_TOKENS, SemanticCells, StaticEmbedder, wordpiece_basic_tokens
from ._sums import (
    FIT_SUMS,
    LATENCY_SUMS,
    SUM_NAMES,
    DecayedSums,
    Estimates,
    LearnerConfig,
    LearnerState,
    Surprise,
    sum_shapes,
)

__all__ = [
    "CAPABILITIES",
    "DEFAULT_TABLE",
    "FIT_SUMS",
    "LATENCY_SUMS",
    "MAX_TOKENS",
    "POLICIES",
    "SUM_NAMES",
    "Baseline",
    "Candidate",
    "Catalogue",
    "CellLevels",
    "CellMode",
    "Choice",
    "DecayedSums",
    "Decision",
    "Estimates",
    "FastRoute",
    "Greedy",
    "Learner",
    "LearnerConfig",
    "LearnerState",
    "LogScale",
    "Model",
    "Outcome",
    "Policy",
    "Profile",
    "Profiler",
    "RouteRequest",
    "Router",
    "SemanticCells",
    "Softmax",
    "StaticEmbedder",
    "Surprise",
    "TaskRules",
    "Thompson",
    "Ucb",
    "apply_overlay",
    "between_cell_strength",
    "catalogue_from_settings",
    "cell_baseline",
    "estimate_tokens",
    "fetch_openrouter",
    "load_bundled",
    "load_catalogue",
    "load_openrouter",
    "make_policy",
    "normal_quantile",
    "provider_groups",
    "score_sd",
    "shrunk_quality",
    "sum_shapes",
    "wordpiece_basic_tokens",
]
