"""Running totals of a learner's view sums, kept up as evidence arrives.

The estimates pool the (cell, model) sums over models (a cell's evidence, feedback and output
lengths), over cells (a model's success) and over a provider's models (the calibration). Adding
those up again after every answer would touch the whole table; these totals move by the same
amounts as the sums they add up, so one answer updates a few numbers, and reading them costs
O(cells) or O(providers).

Totals are kept in the stored units of their sums (``DecayedSums.t0``): multiply by the sums'
``factor(t)`` to read them at ``t``. When the sums are rebased (their ``t0`` moves), merged or
replaced, ``sync`` adds them up afresh.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from ._sums import DecayedSums

__all__ = ["ViewTotals"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]
_TOTALLED = ("success", "quality", "tokens", "calib")


class ViewTotals:
    """Per-cell, per-model and per-provider totals of ``view``'s sums (stored units)."""

    __slots__ = (
        "_groups",
        "_n_groups",
        "_t0",
        "_view",
        "cell_n",
        "cell_q",
        "cell_tokens",
        "cell_tokens_w",
        "group_s1",
        "group_w",
        "model_n",
        "model_ok",
    )

    def __init__(self, view: Mapping[str, DecayedSums], groups: IntArray, n_groups: int) -> None:
        self._view = view
        self._groups = groups
        self._n_groups = n_groups
        self._t0: dict[str, float] = {}
        self.sync()

    def sync(self) -> None:
        """Add the sums up afresh (after a rebase, a merge, a reset)."""
        success, quality, tokens, calib = (self._view[name] for name in _TOTALLED)
        self.cell_n: FloatArray = success.w.sum(axis=1)  # a cell's outcomes, all models
        self.model_n: FloatArray = success.w.sum(axis=0)  # a model's outcomes, all cells
        self.model_ok: FloatArray = success.s1.sum(axis=0)  # ... and its successes
        self.cell_q: FloatArray = quality.w.sum(axis=1)  # a cell's quality scores
        self.cell_tokens_w: FloatArray = tokens.w.sum(axis=1)
        self.cell_tokens: FloatArray = tokens.s1.sum(axis=1)
        n = self._n_groups
        self.group_w: FloatArray = np.bincount(self._groups, calib.w, n).astype(np.float64, copy=False)
        self.group_s1: FloatArray = np.bincount(self._groups, calib.s1, n).astype(np.float64, copy=False)
        self._t0 = {name: self._view[name].t0 for name in _TOTALLED}

    def added(self, name: str, cell: int | tuple[int, int], g: float, x: float) -> None:
        """The view's ``name`` sums just took ``g`` (stored units) of an observation ``x``."""
        if name not in self._t0:
            return
        if self._view[name].t0 != self._t0[name]:  # the add rebased the sums: start again
            self.sync()
            return
        if name == "success":
            task, model = cell  # type: ignore[misc]
            self.cell_n[task] += g
            self.model_n[model] += g
            self.model_ok[model] += g * x
        elif name == "tokens":
            task = cell[0]  # type: ignore[index]
            self.cell_tokens_w[task] += g
            self.cell_tokens[task] += g * x
        elif name == "quality":
            self.cell_q[cell[0]] += g  # type: ignore[index]
        else:  # calib
            group = self._groups[cell]
            self.group_w[group] += g
            self.group_s1[group] += g * x

    def group_log(self, group: int, t: float, strength: float) -> float:
        """Provider ``group``'s pooled log ratio to the public figures at ``t``."""
        f = self._view["calib"].factor(t)
        return float(self.group_s1[group]) * f / (strength + float(self.group_w[group]) * f)

    def group_logs(self, t: float, strength: float) -> FloatArray:
        """Every provider's pooled log ratio at ``t``."""
        f = self._view["calib"].factor(t)
        logs: FloatArray = (self.group_s1 * f) / (strength + self.group_w * f)
        return logs
