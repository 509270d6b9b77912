"""Scratch arrays a router reuses for every decision, so the hot path allocates nothing."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from ._scoring import CostScale, LogScale

__all__ = ["ScoreBuffers"]

FloatArray = npt.NDArray[np.float64]
_COEFFICIENTS_KEPT = 4096  # distinct weight triples (clients may send their own): bounded


class ScoreBuffers:
    """Score, latency and cost are rows of one array: one fancy index takes them for a chain.

    ``logs`` holds the clipped log latency, the cost term's input (dollars for a linear cost
    scale, the clipped log for a log one) and the quality value; the score is their dot product
    with ``coefficients(weights)``, kept per weights seen.
    """

    def __init__(self, n: int, latency_scale: LogScale, cost_scale: CostScale) -> None:
        # One block: score, latency, cost (``terms``), then clipped logs and the value (``logs``),
        # so a chain's numbers are taken in one fancy index.
        self.block = np.empty((6, n))
        self.terms, self.logs = self.block[:3], self.block[3:]
        self.score, self.lat, self.cost = self.terms[0], self.terms[1], self.terms[2]
        # The log rows (latency, and cost on a log scale) clipped at once: bounds as columns
        # broadcast over the models. A linear cost row is dollars, unclipped.
        self.cost_linear = cost_scale.linear
        if isinstance(cost_scale, LogScale):
            self.log_low = np.array([[latency_scale.log_low], [cost_scale.log_low]])
            self.log_high = np.array([[latency_scale.log_high], [cost_scale.log_high]])
        else:  # only the latency row is a clipped log
            self.log_low = np.array([[latency_scale.log_low]])
            self.log_high = np.array([[latency_scale.log_high]])
        self.tmp = np.empty(n)
        self.tmp2 = np.empty(n)
        self.mask = np.empty(n, dtype=np.bool_)
        self.mask2 = np.empty(n, dtype=np.bool_)
        self._scales = (latency_scale, cost_scale)
        self._coef: dict[tuple[float, float, float], FloatArray] = {}

    def coefficients(self, weights: tuple[float, float, float]) -> FloatArray:
        """The score's weights on the rows of ``logs``: latency, cost, value."""
        coef = self._coef.get(weights)
        if coef is None:
            ls, cs = self._scales
            coef = np.array([-weights[0] * ls.inv_range, -weights[1] * cs.inv_range, weights[2]])
            if len(self._coef) >= _COEFFICIENTS_KEPT:
                self._coef.clear()
            self._coef[weights] = coef
        return coef
