"""Quality estimates that borrow strength from coarser cells: fine cell, then task class, then all.

The learner keeps quality sums per (fine cell, model) only; the coarser levels are their sums
(a fine cell belongs to one task class), so replicas still merge by adding the fine sums and
nothing here is stored. Each level's estimate is the next coarser one's, worth ``k`` pseudo
observations, updated by that level's own evidence:

    q_global = (k * prior   + S_global) / (k + W_global)
    q_task   = (k * q_global + S_task)  / (k + W_task)
    q_cell   = (k * q_task   + S_cell)  / (k + W_cell)

so a fine cell with no evidence answers with its task class's estimate (and a task class with
none with the global one), and a fine cell's own evidence takes over as it accumulates. The
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

__all__ = ["CellLevels", "shrunk_quality"]

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
    k: float, parent_q: FloatArray, parent_var: FloatArray, s1: FloatArray, w: FloatArray
) -> tuple[FloatArray, FloatArray]:
    q = (k * parent_q + s1) / (k + w)
    share = k / (k + w)
    var = q * (1.0 - q) / (k + w) + share * share * parent_var
    return q, var


def shrunk_quality(
    s1: FloatArray,
    w: FloatArray,
    prior: FloatArray,
    levels: CellLevels,
    k: float,
    k_cell: float | None = None,
) -> tuple[FloatArray, FloatArray]:
    """Quality and the variance of its mean per (fine cell, model), from decayed fine-cell sums
    ``s1`` and ``w`` (already read at the current time) and a per-model ``prior``. ``k_cell``
    (default ``k``): what the task class's estimate is worth in a fine cell, in observations;
    larger says cells of one class differ less."""
    prior = np.broadcast_to(prior, s1.shape[1:])
    q_global, var_global = _level(k, prior, prior * (1.0 - prior) / (k + 1.0), s1.sum(axis=0), w.sum(axis=0))
    q_task, var_task = _level(k, q_global, var_global, levels.up(s1), levels.up(w))
    return _level(k if k_cell is None else k_cell, q_task[levels.parents], var_task[levels.parents], s1, w)
