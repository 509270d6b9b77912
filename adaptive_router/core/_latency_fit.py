"""Each model's latency line, ``latency(N) = ttft + tpot * N``, fitted from the decayed sums
(see ``_learning``): the vectorised arithmetic of a full rebuild. ``Learner._line_one`` is the
same for one row in Python floats (run on every answer), pinned equal by a property test."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from ._sums import FIT_SUMS, DecayedSums, LearnerConfig

__all__ = ["MIN_LOG_SD", "MIN_TPOT_S", "MIN_TTFT_S", "REF_TOKENS", "TOKEN_SCALE", "fit_lines"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]

MIN_LOG_SD = 0.05
TOKEN_SCALE = 100.0  # the fit's x is hundreds of tokens: well-conditioned sums
REF_TOKENS = 256.0  # where the prior's second pseudo-point sits
MIN_TTFT_S = 1e-4
MIN_TPOT_S = 1e-7


def fit_lines(
    view: Mapping[str, DecayedSums],
    t: float,
    models: slice | IntArray,
    factor: FloatArray,
    prior_ttft: FloatArray,
    prior_tpot: FloatArray,
    config: LearnerConfig,
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray, FloatArray]:
    """Each model's line by decayed least squares over its points and two prior points (at
    0 and ``REF_TOKENS`` tokens, on the calibrated catalogue line, ``k/2`` each).

    Returns ttft, tpot, the evidence weight, the mean x (hundreds of tokens) of the points,
    and the log spread of one answer: the points' relative residual about the line, blended
    with ``latency_log_sd_prior`` worth ``latency_prior_strength`` points. The prior line
    itself weighs ``latency_prior_strength / (1 + the model's calibration evidence)``. Everything comes
    from the sums, so learners that merged their evidence agree exactly, whatever the order
    it arrived in."""
    n, y, c = (view[name] for name in FIT_SUMS)
    f = n.factor(t)
    w = n.w[models] * f
    sx, sxx = n.s1[models] * f, n.s2[models] * f
    sy, syy = y.s1[models] * f, y.s2[models] * f
    sxy = 0.5 * (c.s2[models] * f - sxx - syy)
    k, sd0 = config.latency_prior_strength, config.latency_log_sd_prior
    calib = view["calib"]
    k_line = k / (1.0 + calib.w[models] * calib.factor(t))  # see _line_one
    half, xr = 0.5 * k_line, REF_TOKENS / TOKEN_SCALE
    p0 = prior_ttft[models] * factor
    p1 = p0 + prior_tpot[models] * factor * REF_TOKENS
    W = w + k_line
    SX = sx + half * xr
    SXX = sxx + half * xr * xr
    SY = sy + half * (p0 + p1)
    SXY = sxy + half * xr * p1
    det = W * SXX - SX * SX
    b = (W * SXY - SX * SY) / det
    b = np.maximum(b, MIN_TPOT_S * TOKEN_SCALE)
    a = (SY - b * SX) / W
    low = a < MIN_TTFT_S
    if np.any(low):  # the line would start below zero: pin its start, refit the slope
        a = np.where(low, MIN_TTFT_S, a)
        b = np.where(low, np.maximum((SXY - a * SX) / SXX, MIN_TPOT_S * TOKEN_SCALE), b)
    mean_x = sx / np.maximum(w, 1e-12)
    rss = syy - 2 * a * sy - 2 * b * sxy + a * a * w + 2 * a * b * sx + b * b * sxx
    rel2 = np.maximum(rss, 0.0) / np.maximum(syy, 1e-300)
    second = (k * sd0 * sd0 + w * rel2) / (k + w)
    sd = np.sqrt(np.maximum(second, MIN_LOG_SD**2))
    return a, b / TOKEN_SCALE, w, mean_x, sd
