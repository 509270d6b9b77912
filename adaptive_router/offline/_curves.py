"""Cost-quality curves over an outcome table: one replay per quality weight, like RouteLLM's."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .._settings import Settings
from ._outcomes import LatencyGroups, OutcomeTable, Progress, Weights3, replay_outcomes

CURVE_QUALITY_WEIGHTS = (0.2, 0.35, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


@dataclass
class CurvePoint:
    quality_weight: float
    weights: Weights3
    quality: float
    cost_usd: float
    quality_ratio: float  # relative to the best single model by quality
    cost_ratio: float


def curve_weights(quality_weight: float) -> Weights3:
    """Quality weight ``q``; the rest split 1:2 between latency and cost, as in the quality mode."""
    rest = 1.0 - quality_weight
    return (rest / 3.0, 2.0 * rest / 3.0, quality_weight)


def cost_quality_curve(
    table: OutcomeTable,
    settings: Settings | None = None,
    policy: str = "ucb",
    quality_weights: Iterable[float] = CURVE_QUALITY_WEIGHTS,
    seed: int = 0,
    limit: int | None = None,
    latency: LatencyGroups | str | Path | None = None,
    *,
    progress: Progress | None = None,
    shadow_explore: bool | None = None,
) -> list[CurvePoint]:
    """Quality against cost as the quality weight grows, like RouteLLM's curves: one replay each."""
    weights_list = list(quality_weights)
    points = []
    for i, qw in enumerate(weights_list):
        step = None if progress is None else _offset_progress(progress, i, len(weights_list))
        report = replay_outcomes(
            table,
            None,
            settings,
            policy,
            None,
            seed,
            True,
            limit,
            latency,
            weights=curve_weights(qw),
            progress=step,
            shadow_explore=shadow_explore,
        )
        points.append(
            CurvePoint(
                qw,
                report.weights,
                report.router.quality,
                report.router.cost_usd,
                report.quality_ratio,
                report.cost_ratio,
            )
        )
    return points


def _offset_progress(progress: Progress, index: int, runs: int) -> Progress:
    def step(done: int, total: int) -> None:
        progress(index * total + done, runs * total)

    return step
