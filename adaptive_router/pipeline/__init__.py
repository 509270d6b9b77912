"""One routed request's stages outside HTTP (admit, decide, execute, account, store), what a
process routes with, and its metrics."""

from __future__ import annotations

from ._evaluation import Evaluations, EvaluationStats
from ._metrics import (
    BREAKER_STATES,
    DECISION_BUCKETS,
    INSTALL_HINT,
    PREFIX,
    REQUEST_BUCKETS,
    REQUEST_OUTCOMES,
    Metrics,
)
from ._pipeline import Call, Hook, Hooks, NoHook, Pipeline, Streamed
from ._runtime import (
    SIMULATOR_URL_ENV,
    RouterService,
    Running,
    build_service,
    complete_once,
    start_simulator,
    wants_simulator,
)

__all__ = [
    "BREAKER_STATES",
    "DECISION_BUCKETS",
    "INSTALL_HINT",
    "PREFIX",
    "REQUEST_BUCKETS",
    "REQUEST_OUTCOMES",
    "SIMULATOR_URL_ENV",
    "Call",
    "EvaluationStats",
    "Evaluations",
    "Hook",
    "Hooks",
    "Metrics",
    "NoHook",
    "Pipeline",
    "RouterService",
    "Running",
    "Streamed",
    "build_service",
    "complete_once",
    "start_simulator",
    "wants_simulator",
]
