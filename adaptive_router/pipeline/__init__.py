"""One routed request's stages outside HTTP (admit, decide, execute, account, store), what a
process routes with, its metrics, and what runs beside the requests (reloads, probes)."""

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
from ._operations import Operations, operations
from ._pipeline import Call, Hook, Hooks, NoHook, Pipeline, Streamed
from ._prober import PROBE_PROMPT, Prober, ProbeResult
from ._reload import RESTART_ONLY, Reloader, ReloadReport, changed_keys, keep_restart_only
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
    "PROBE_PROMPT",
    "REQUEST_BUCKETS",
    "REQUEST_OUTCOMES",
    "RESTART_ONLY",
    "SIMULATOR_URL_ENV",
    "Call",
    "EvaluationStats",
    "Evaluations",
    "Hook",
    "Hooks",
    "Metrics",
    "NoHook",
    "Operations",
    "Pipeline",
    "ProbeResult",
    "Prober",
    "ReloadReport",
    "Reloader",
    "RouterService",
    "Running",
    "Streamed",
    "build_service",
    "changed_keys",
    "complete_once",
    "keep_restart_only",
    "operations",
    "start_simulator",
    "wants_simulator",
]
