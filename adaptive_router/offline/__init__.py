"""Offline work: the traffic log, off-policy replay of it, replay over outcome tables, and
preference pairs from the log."""

from __future__ import annotations

from ._curves import CurvePoint, cost_quality_curve, curve_weights
from ._outcomes import (
    Arm,
    LatencyGroups,
    OutcomeReplay,
    OutcomeTable,
    load_latency,
    load_outcomes,
    outcome_catalogue,
    replay_outcomes,
    table_sources,
)
from ._preferences import (
    evaluation_record,
    preference_pairs,
    preference_record,
    write_pairs,
)
from ._replay import (
    Interval,
    LogData,
    PolicyEstimate,
    RewardSpec,
    TargetPolicy,
    evaluate,
    evaluate_many,
    log_files,
    logged_value,
    read_log,
    target_distribution,
)
from ._trafficlog import SCHEMA_VERSION, TrafficLog, decision_record, feedback_record, prompt_digest

__all__ = [
    "SCHEMA_VERSION",
    "Arm",
    "CurvePoint",
    "Interval",
    "LatencyGroups",
    "LogData",
    "OutcomeReplay",
    "OutcomeTable",
    "PolicyEstimate",
    "RewardSpec",
    "TargetPolicy",
    "TrafficLog",
    "cost_quality_curve",
    "curve_weights",
    "decision_record",
    "evaluate",
    "evaluate_many",
    "evaluation_record",
    "feedback_record",
    "load_latency",
    "load_outcomes",
    "log_files",
    "logged_value",
    "outcome_catalogue",
    "preference_pairs",
    "preference_record",
    "prompt_digest",
    "read_log",
    "replay_outcomes",
    "table_sources",
    "target_distribution",
    "write_pairs",
]
