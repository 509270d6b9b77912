"""Quality signals without client feedback: built-in evaluators, plug-ins and the judge.

The hook that runs them after each answer is :class:`adaptive_router.pipeline.Evaluations`.
"""

from __future__ import annotations

from ._builtin import (
    EmptyAnswer,
    Evaluator,
    InvalidJson,
    Refusal,
    Sample,
    Truncated,
    builtin_evaluators,
    load_plugin,
    wants_json,
)
from ._judge import JUDGE_OUTCOMES, DailySpend, Judge, judge_messages, parse_score, side_decision

__all__ = [
    "JUDGE_OUTCOMES",
    "DailySpend",
    "EmptyAnswer",
    "Evaluator",
    "InvalidJson",
    "Judge",
    "Refusal",
    "Sample",
    "Truncated",
    "builtin_evaluators",
    "judge_messages",
    "load_plugin",
    "parse_score",
    "side_decision",
    "wants_json",
]
