"""The simulated OpenAI-compatible upstream, its scenarios, and the in-process learning lab."""

from __future__ import annotations

from ._app import CatalogueLike, create_simulator_app, run_simulator, sim_models_from_catalogue
from ._judge import JUDGE_MODEL, JUDGE_PRICE
from ._lab import LAB_IDS, LAB_TRUTH, SimClock, Trace, World, lab, run
from ._scenario import (
    CHARS_PER_TOKEN,
    DEFAULT_ERROR_RATE,
    DEFAULT_RATE_LIMIT_RATE,
    DEFAULT_TAIL_FACTOR,
    DEFAULT_TAIL_PROB,
    DEFAULT_TPOT_S,
    DEFAULT_TPOT_SIGMA,
    DEFAULT_TTFT_S,
    DEFAULT_TTFT_SIGMA,
    ModelOverride,
    Scenario,
    SimEvent,
    SimModel,
    apply_overrides,
    fit_llmperf,
    load_scenario,
    loc_key,
    parse_scenario,
)
from ._wire import ChatRequest, bad_request, error_response

__all__ = [
    "CHARS_PER_TOKEN",
    "DEFAULT_ERROR_RATE",
    "DEFAULT_RATE_LIMIT_RATE",
    "DEFAULT_TAIL_FACTOR",
    "DEFAULT_TAIL_PROB",
    "DEFAULT_TPOT_S",
    "DEFAULT_TPOT_SIGMA",
    "DEFAULT_TTFT_S",
    "DEFAULT_TTFT_SIGMA",
    "JUDGE_MODEL",
    "JUDGE_PRICE",
    "LAB_IDS",
    "LAB_TRUTH",
    "CatalogueLike",
    "ChatRequest",
    "ModelOverride",
    "Scenario",
    "SimClock",
    "SimEvent",
    "SimModel",
    "Trace",
    "World",
    "apply_overrides",
    "bad_request",
    "create_simulator_app",
    "error_response",
    "fit_llmperf",
    "lab",
    "load_scenario",
    "loc_key",
    "parse_scenario",
    "run",
    "run_simulator",
    "sim_models_from_catalogue",
]
