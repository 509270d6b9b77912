"""One model's latency line from its decayed sums, in Python floats.

The same arithmetic as ``_latency_fit.fit_lines`` for a single row: it runs on every recorded
answer, where a NumPy call on a one-element array costs more than this whole function. A
property test in tests/test_learning.py pins the two equal.
"""

from __future__ import annotations

import math

from ._latency_fit import MIN_LOG_SD, MIN_TPOT_S, MIN_TTFT_S, REF_TOKENS, TOKEN_SCALE

__all__ = ["fit_row"]

_XR = REF_TOKENS / TOKEN_SCALE


def fit_row(
    sums: tuple[float, float, float, float, float, float],
    k: float,
    k_line: float,
    p0: float,
    p1: float,
    sd0: float,
) -> tuple[float, float, float]:
    """ttft, tpot (per token) and log spread from ``sums`` = (w, sx, sxx, sy, syy, sxy), read
    now; the prior line through ``p0`` (0 tokens) and ``p1`` (``REF_TOKENS``) weighs ``k_line``,
    the prior spread ``sd0`` weighs ``k``."""
    w, sx, sxx, sy, syy, sxy = sums
    half = 0.5 * k_line
    big_w, big_sx, big_sxx = w + k_line, sx + half * _XR, sxx + half * _XR * _XR
    big_sy, big_sxy = sy + half * (p0 + p1), sxy + half * _XR * p1
    b = max(
        (big_w * big_sxy - big_sx * big_sy) / (big_w * big_sxx - big_sx * big_sx),
        MIN_TPOT_S * TOKEN_SCALE,
    )
    a = (big_sy - b * big_sx) / big_w
    if a < MIN_TTFT_S:
        a = MIN_TTFT_S
        b = max((big_sxy - a * big_sx) / big_sxx, MIN_TPOT_S * TOKEN_SCALE)
    rss = syy - 2 * a * sy - 2 * b * sxy + a * a * w + 2 * a * b * sx + b * b * sxx
    rel2 = max(rss, 0.0) / max(syy, 1e-300)
    second = (k * sd0 * sd0 + w * rel2) / (k + w)
    return a, b / TOKEN_SCALE, math.sqrt(max(second, MIN_LOG_SD**2))
