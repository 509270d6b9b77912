"""The latency part of a learner's estimates for some columns: what a provider's calibration
moves. A full rebuild computes it with the rest; when one provider's pooled speed moves, only
its models' latency columns are recomputed (1-D work, no cell touched)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from ._latency_fit import TOKEN_SCALE, fit_lines
from ._sums import DecayedSums, LearnerConfig

__all__ = ["DISPLACED", "latency_columns"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]
DISPLACED = 0.1  # log units above its long-run level before a model counts as displaced


def latency_columns(
    view: Mapping[str, DecayedSums],
    t: float,
    models: slice | IntArray,
    factor: FloatArray,
    prior: tuple[FloatArray, FloatArray],
    config: LearnerConfig,
) -> dict[str, FloatArray]:
    """The ``Estimates`` latency fields for ``models``, whose priors are scaled by ``factor``;
    ``prior`` is every model's catalogue (ttft, tpot)."""
    prior_ttft, prior_tpot = prior
    ttft, tpot, lat_n, mean_x, sd = fit_lines(view, t, models, factor, prior_ttft, prior_tpot, config)
    # How far the recent fit sits above the long-run (calibrated prior) line, where the
    # model's answers were: what a model that recovered may win back.
    tokens_at = mean_x * TOKEN_SCALE
    prior_line = (prior_ttft[models] + prior_tpot[models] * tokens_at) * factor
    # Within 10% of the long-run level is not displaced (noise, not a change worth a recheck).
    displacement = np.where(lat_n > 0, np.log((ttft + tpot * tokens_at) / prior_line) - DISPLACED, 0.0)
    quantile = np.exp(config.latency_z * sd)
    return {
        "ttft": ttft,
        "tpot": tpot,
        "ttft_q": ttft * quantile,
        "tpot_q": tpot * quantile,
        "latency_log_sd": sd,
        "latency_evidence": lat_n,
        "latency_var": (sd * sd) / (config.prior_strength + lat_n),
        "displacement": np.maximum(displacement, 0.0),
        "provider_factor": factor,
    }
