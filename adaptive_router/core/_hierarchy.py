"""Quality estimates that borrow strength from coarser cells: fine cell, then task class, then all.

The learner keeps quality sums per (fine cell, model) only; the coarser levels are their sums
(a fine cell belongs to one task class), so replicas still merge by adding the fine sums and
nothing here is stored. Each level's estimate is the next coarser one's, worth ``k`` pseudo
observations, updated by that level's own evidence:

    q_global = (k * prior   + S_global) / (k + W_global)
    q_task   = (k * q_global + S_task)  / (k + W_task)
    q_cell   = (k * q_task   + S_cell)  / (k + W_cell)

so a fine cell with no evidence answers with its task class's estimate (and a task class with
none with the global one), and a fine cell's own evidence takes over as it accumulates. For the
fine cells ``k`` is per model and read off the data unless set: how far cells' own means stray
from their class's beyond sampling noise (empirical Bayes, method of moments). The
variance of a level's mean adds what its own evidence leaves uncertain, ``q (1 - q) / (k + W)``,
to the parent's variance shrunk by the parent's share of the weight, ``(k / (k + W))^2``: a new
fine cell under a well-known task class is uncertain only by how far cells of one class can
differ, which is what exploration there can still learn.

Everything is whole-array NumPy over the models given (a column slice or index array).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

__all__ = ["CellLevels", "between_cell_strength", "shrunk_quality"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]


class CellLevels:
    """Which task class each fine cell belongs to (``parents[cell] = task``), for ``tasks`` classes."""

    def __init__(self, parents: Sequence[int], tasks: int) -> None:
        self.parents: IntArray = np.asarray(parents, dtype=np.intp)
        if self.parents.ndim != 1 or (
            self.parents.size and not 0 <= self.parents.min() <= self.parents.max() < tasks
        ):
            raise ValueError("every cell's parent must be a task index in range")
        self.tasks = tasks
        # One-hot (tasks, cells): parent sums are one matrix product, whatever the cell order.
        self._onehot = np.zeros((tasks, self.parents.size))
        self._onehot[self.parents, np.arange(self.parents.size)] = 1.0

    def up(self, fine: FloatArray) -> FloatArray:
        """Per task class: the sum of its fine cells' rows."""
        out: FloatArray = self._onehot @ fine
        return out


def _level(
    k: float | FloatArray, parent_q: FloatArray, parent_var: FloatArray, s1: FloatArray, w: FloatArray
) -> tuple[FloatArray, FloatArray]:
    q = (k * parent_q + s1) / (k + w)
    share = k / (k + w)
    var = q * (1.0 - q) / (k + w) + share * share * parent_var
    return q, var


_TAU_PRIOR_WEIGHT = 50.0  # observations behind the default between-cell spread
_K_CELL_RANGE = (1.0, 1_000.0)


def between_cell_strength(s1: FloatArray, w: FloatArray, q_parent: FloatArray, k: float) -> FloatArray:
    """Per model: what the parent's estimate is worth in a fine cell, from how far the fine
    cells' own means stray from their parents' beyond sampling noise (method of moments, pooled
    over all cells). The spread ``tau^2`` starts at ``q (1 - q) / k`` (``k`` worth, as for the
    other levels) with ``_TAU_PRIOR_WEIGHT`` observations behind it; then ``k_cell = q (1 - q) /
    tau^2``: cells that agree with their class lean on it, cells that differ learn on their own."""
    mean = np.divide(s1, w, out=q_parent.copy(), where=w > 0)
    bernoulli = q_parent * (1.0 - q_parent)
    excess = (w * (mean - q_parent) ** 2 - np.where(w > 0, bernoulli, 0.0)).sum(axis=0)
    pooled = np.clip(bernoulli.mean(axis=0), 1e-3, 0.25)
    tau2 = (excess + _TAU_PRIOR_WEIGHT * pooled / k) / (w.sum(axis=0) + _TAU_PRIOR_WEIGHT)
    strength: FloatArray = np.clip(pooled / np.maximum(tau2, 1e-9), *_K_CELL_RANGE)
    return strength


def shrunk_quality(
    s1: FloatArray,
    w: FloatArray,
    prior: FloatArray,
    levels: CellLevels,
    k: float,
    k_cell: float | None = None,
) -> tuple[FloatArray, FloatArray]:
    """Quality and the variance of its mean per (fine cell, model), from decayed fine-cell sums
    ``s1`` and ``w`` (already read at the current time) and a per-model ``prior``. ``k_cell``:
    what the task class's estimate is worth in a fine cell, in observations (larger says cells
    of one class differ less); None: estimated from the data (:func:`between_cell_strength`)."""
    prior = np.broadcast_to(prior, s1.shape[1:])
    q_global, var_global = _level(k, prior, prior * (1.0 - prior) / (k + 1.0), s1.sum(axis=0), w.sum(axis=0))
    q_task, var_task = _level(k, q_global, var_global, levels.up(s1), levels.up(w))
    q_parent, var_parent = q_task[levels.parents], var_task[levels.parents]
    strength = between_cell_strength(s1, w, q_parent, k) if k_cell is None else k_cell
    return _level(strength, q_parent, var_parent, s1, w)
