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

**Cell difficulty** (``baseline``, :func:`cell_baseline`): a model's coarser estimate pools the
cells it happened to be tried in, so one tried mostly on hard prompts looks weak everywhere
(selection bias). With a baseline, quality is read as the cell's difficulty plus the model's
strength, ``q = mu_cell + delta``: ``mu`` per fine cell is fitted over every model's answers
(a few rounds of alternating weighted means, a two-way additive model), and the levels above
pool each model's *residuals* ``S - W * mu`` instead of its raw sums. A model's strength learned
where it was tried then carries to cells where it was not, at those cells' difficulty.

Everything is whole-array NumPy over the models given (a column slice or index array).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["Baseline", "CellLevels", "between_cell_strength", "cell_baseline", "shrunk_quality"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]


@dataclass(frozen=True)
class Baseline:
    """Each fine cell's difficulty ``mu`` (its expected quality for a model of average strength)
    and the mean of the models' priors (a model's prior strength is its prior less this)."""

    cell: FloatArray
    prior_mean: float


class CellLevels:
    """Which task class each fine cell belongs to (``parents[cell] = task``), for ``tasks`` classes.

    ``difficulty``: estimates read the cells' difficulty (``baseline``), which ``refit`` sets
    from every model's sums on each full refresh of the estimates and which stays as fitted
    between them (a refresh of a few models' columns reads the last fit).
    """

    def __init__(self, parents: Sequence[int], tasks: int, difficulty: bool = False) -> None:
        self.difficulty = difficulty
        self.baseline: Baseline | None = None
        self.parents: IntArray = np.asarray(parents, dtype=np.intp)
        if self.parents.ndim != 1 or (
            self.parents.size and not 0 <= self.parents.min() <= self.parents.max() < tasks
        ):
            raise ValueError("every cell's parent must be a task index in range")
        self.tasks = tasks
        # One-hot (tasks, cells): parent sums are one matrix product, whatever the cell order.
        self._onehot = np.zeros((tasks, self.parents.size))
        self._onehot[self.parents, np.arange(self.parents.size)] = 1.0

    def with_difficulty(self, difficulty: bool) -> CellLevels:
        """The same levels, reading the cells' difficulty or not."""
        return CellLevels(self.parents.tolist(), self.tasks, difficulty)

    def refit(self, s1: FloatArray, w: FloatArray, prior: FloatArray, k: float) -> None:
        """Fit the cells' difficulty to every model's fine sums (read now), when asked to."""
        if self.difficulty:
            self.baseline = cell_baseline(s1, w, prior, self, k)

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


_BASELINE_ROUNDS = 4


def cell_baseline(s1: FloatArray, w: FloatArray, prior: FloatArray, levels: CellLevels, k: float) -> Baseline:
    """Fit ``q(cell, model) = mu_cell + delta_model`` to every model's fine sums (all columns,
    read at the current time) by alternating weighted means: ``mu`` shrinks toward its task
    class's (then the global) mean and ``delta`` toward the model's prior strength, ``k``
    pseudo-observations each. Deterministic, from the sums alone: replicas that merged agree."""
    prior = np.broadcast_to(prior, s1.shape[1:])
    prior_mean = float(prior.mean()) if prior.size else 0.5
    delta = prior - prior_mean
    w_cell = w.sum(axis=1)
    w_model = w.sum(axis=0)
    mu = np.full(s1.shape[0], prior_mean)
    for _ in range(_BASELINE_ROUNDS):
        r_cell = (s1 - w * delta).sum(axis=1)
        total = (k * prior_mean + r_cell.sum()) / (k + w_cell.sum())
        mu_task = (k * total + levels.up(r_cell)) / (k + levels.up(w_cell))
        mu = (k * mu_task[levels.parents] + r_cell) / (k + w_cell)
        delta = (k * (prior - prior_mean) + (s1 - w * mu[:, None]).sum(axis=0)) / (k + w_model)
    return Baseline(mu, prior_mean)


def _additive(
    s1: FloatArray,
    w: FloatArray,
    prior: FloatArray,
    levels: CellLevels,
    k: float,
    k_cell: float | None,
    baseline: Baseline,
) -> tuple[FloatArray, FloatArray]:
    """``shrunk_quality`` on residuals from the cells' difficulty: the levels pool strengths."""
    mu = baseline.cell[:, None]
    resid = s1 - w * mu
    w_global = w.sum(axis=0)
    d_global = (k * (prior - baseline.prior_mean) + resid.sum(axis=0)) / (k + w_global)
    w_task = levels.up(w)
    d_task = (k * d_global + levels.up(resid)) / (k + w_task)
    d_parent, w_parent = d_task[levels.parents], w_task[levels.parents]
    q_parent = np.clip(mu + d_parent, 0.0, 1.0)
    strength = between_cell_strength(s1, w, q_parent, k) if k_cell is None else k_cell
    q = np.clip(mu + (strength * d_parent + resid) / (strength + w), 0.0, 1.0)
    noise = np.maximum(q * (1.0 - q), 0.01)  # a Bernoulli spread, floored: 0/1 cells still learn
    var = noise / (k + w_global)
    share = k / (k + w_parent)
    var = noise / (k + w_parent) + share * share * var
    share = strength / (strength + w)
    var = noise / (strength + w) + share * share * var
    return q, var


def shrunk_quality(
    s1: FloatArray,
    w: FloatArray,
    prior: FloatArray,
    levels: CellLevels,
    k: float,
    k_cell: float | None = None,
    baseline: Baseline | None = None,
) -> tuple[FloatArray, FloatArray]:
    """Quality and the variance of its mean per (fine cell, model), from decayed fine-cell sums
    ``s1`` and ``w`` (already read at the current time) and a per-model ``prior``. ``k_cell``:
    what the task class's estimate is worth in a fine cell, in observations (larger says cells
    of one class differ less); None: estimated from the data (:func:`between_cell_strength`).
    ``baseline``: the cells' difficulty (:func:`cell_baseline`; default: ``levels.baseline`` when
    ``levels.difficulty``); the levels then pool strengths."""
    prior = np.broadcast_to(prior, s1.shape[1:])
    if baseline is None and levels.difficulty:
        if levels.baseline is None or levels.baseline.cell.shape[0] != s1.shape[0]:
            raise ValueError("levels read the cells' difficulty but none was fitted (CellLevels.refit)")
        baseline = levels.baseline
    if baseline is not None:
        return _additive(s1, w, prior, levels, k, k_cell, baseline)
    q_global, var_global = _level(k, prior, prior * (1.0 - prior) / (k + 1.0), s1.sum(axis=0), w.sum(axis=0))
    q_task, var_task = _level(k, q_global, var_global, levels.up(s1), levels.up(w))
    q_parent, var_parent = q_task[levels.parents], var_task[levels.parents]
    strength = between_cell_strength(s1, w, q_parent, k) if k_cell is None else k_cell
    return _level(strength, q_parent, var_parent, s1, w)
