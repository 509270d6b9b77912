"""Decayed sufficient statistics (the sums a learner keeps, shares and saves), how fast a
learner believes and forgets (``LearnerConfig``), and what it believes (``Estimates``).

A ``DecayedSums`` keeps, per cell, a decayed weight, sum and sum of squares. Instead of a clock
per cell, every sum is kept in the units of one reference time ``t0``: an observation at time
``t`` adds ``exp(rate * (t - t0))``, and a read at ``t`` multiplies by ``exp(-rate * (t - t0))``.
That is the same as decaying every cell to ``t`` (what DESIGN.md describes with a last-update
time per cell), costs O(1) per observation, and makes merging two sets a plain addition once
one is brought to the other's ``t0``: replicas share state that way without a coordinator.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "CELL_SUMS",
    "FIT_SUMS",
    "LATENCY_SUMS",
    "MODEL_SUMS",
    "STATE_VERSION",
    "SUM_NAMES",
    "DecayedSums",
    "Estimates",
    "LearnerConfig",
    "LearnerState",
    "Surprise",
    "align_state",
    "index_map",
    "read_state",
    "realign",
    "sum_shapes",
    "write_state",
]

FloatArray = npt.NDArray[np.float64]
_REBASE_EXPONENT = 200.0  # exp(200) ~ 7e86: far from overflow, even squared sums
STATE_VERSION = 2
# Per model: the latency fit's sums, the provider calibration.
MODEL_SUMS = ("lat_n", "lat_y", "lat_cross", "calib")
# Per (cell, model): output tokens, success, quality.
CELL_SUMS = ("tokens", "success", "quality")
SUM_NAMES = MODEL_SUMS + CELL_SUMS
FIT_SUMS = ("lat_n", "lat_y", "lat_cross")
LATENCY_SUMS = ("latency",)  # what a surprise names: the model's fitted latency evidence


def sum_shapes(models: int, cells: int) -> dict[str, tuple[int, ...]]:
    """The shape of each named sum for a learner of ``models`` models and ``cells`` cells."""
    shapes: dict[str, tuple[int, ...]] = {name: (models,) for name in MODEL_SUMS}
    shapes.update({name: (cells, models) for name in CELL_SUMS})
    return shapes


class DecayedSums:
    """Decayed weight, sum and sum of squares over cells of any shape."""

    __slots__ = ("_cells", "rate", "s1", "s2", "t0", "w")

    def __init__(self, shape: tuple[int, ...], half_life_s: float, t0: float = 0.0) -> None:
        self.rate = math.log(2.0) / half_life_s
        self.t0 = t0
        self.w = np.zeros(shape)
        self.s1 = np.zeros(shape)
        self.s2 = np.zeros(shape)
        # One cell is read and written through memoryviews of the arrays: Python floats, about
        # half the cost of NumPy's scalar indexing (the arrays are never replaced, only written).
        self._cells: tuple[Any, Any, Any] = (self.w.data, self.s1.data, self.s2.data)

    def add(self, cell: int | tuple[int, int], x: float, t: float, weight: float = 1.0) -> float:
        """Add one observation ``x`` of ``weight`` at ``t``; returns what ``w`` took (stored units)."""
        exponent = self.rate * (t - self.t0)
        if exponent > _REBASE_EXPONENT:
            self.rebase(t)
            exponent = 0.0
        g = weight * math.exp(exponent)
        gx = g * x
        w, s1, s2 = self._cells
        w[cell] += g
        s1[cell] += gx
        s2[cell] += gx * x
        return g

    def add_with(
        self, twin: DecayedSums, cell: int | tuple[int, int], x: float, t: float, weight: float = 1.0
    ) -> float:
        """``add`` here and to ``twin`` (same shape): a learner's view and its local evidence, which
        share a reference time and a rate, so the weight is worked out once. Returns ours."""
        if twin.t0 != self.t0 or twin.rate != self.rate:
            twin.add(cell, x, t, weight)
            return self.add(cell, x, t, weight)
        exponent = self.rate * (t - self.t0)
        if exponent > _REBASE_EXPONENT:
            self.rebase(t)
            twin.rebase(t)
            exponent = 0.0
        g = weight * math.exp(exponent)
        gx = g * x
        gxx = gx * x
        for w, s1, s2 in (self._cells, twin._cells):
            w[cell] += g
            s1[cell] += gx
            s2[cell] += gxx
        return g

    def row(self, cell: int | tuple[int, int]) -> tuple[float, float, float]:
        """One cell's stored weight, sum and sum of squares, as Python floats."""
        w, s1, s2 = self._cells
        return w[cell], s1[cell], s2[cell]

    def factor(self, t: float) -> float:
        """Multiply the stored sums by this to read them as of time ``t``."""
        return math.exp(-self.rate * (t - self.t0))

    def rebase(self, t: float) -> None:
        f = self.factor(t)
        for array in (self.w, self.s1, self.s2):
            array *= f
        self.t0 = t

    def merge(self, other: DecayedSums) -> None:
        """Add ``other``'s evidence to ours (same shape and half-life)."""
        if other.w.shape != self.w.shape or not math.isclose(other.rate, self.rate):
            raise ValueError("can only merge sums of the same shape and half-life")
        if self.rate * (other.t0 - self.t0) > _REBASE_EXPONENT:
            # A much newer reference time (an idle replica's t0 against a busy one's) would
            # overflow exp(); bring ours forward first: same values, smaller numbers.
            self.rebase(other.t0)
        g = math.exp(self.rate * (other.t0 - self.t0))
        self.w += g * other.w
        self.s1 += g * other.s1
        self.s2 += g * other.s2

    def copy(self) -> DecayedSums:
        twin = DecayedSums(self.w.shape, math.log(2.0) / self.rate, self.t0)
        twin.assign(self)
        return twin

    def assign(self, other: DecayedSums) -> None:
        """Become a copy of ``other`` (same shape), in place: references to our arrays stay valid."""
        self.rate, self.t0 = other.rate, other.t0
        self.w[...], self.s1[...], self.s2[...] = other.w, other.s1, other.s2

    def scale(self, cell: int | tuple[int, int], factor: float) -> None:
        """Keep ``factor`` of one cell's evidence (forgetting)."""
        for view in self._cells:
            view[cell] *= factor

    def arrays(self) -> dict[str, Any]:
        return {"w": self.w, "s1": self.s1, "s2": self.s2, "t0": self.t0}


@dataclass
class LearnerState:
    """A learner's sums, addressable by model id and cell name: what is saved and shared."""

    ids: tuple[str, ...]
    tasks: tuple[str, ...]
    sums: dict[str, DecayedSums]


@dataclass(frozen=True)
class Surprise:
    """A latency surprise: model ``model``'s ``name`` evidence ("latency") kept only ``factor``
    at time ``t``. Other replicas apply it to their own evidence."""

    name: str
    model: int
    t: float
    factor: float


@dataclass
class Estimates:
    """Current beliefs, as arrays aligned with the catalogue (and cells for 2-D ones).

    ``ttft`` and ``tpot`` are each model's fitted line (seconds, seconds per output token);
    ``*_q`` the same line raised to the ``latency_z`` quantile of its log residuals (what
    ``max_latency_ms`` and ``max_ttft_ms`` are held against). ``value`` is expected quality times
    success. The ``*_var`` arrays say what exploration can still learn: the variance of the mean
    log-latency and of the mean quality (the latter only matters as often as feedback arrives).
    ``displacement`` is how far (log units) a model's recent latency sits above its long-run
    level; ``seen_at`` the learner's observation count when its latency was last measured
    (``+inf``: never) and ``observations`` (one element) the count now.
    """

    ttft: FloatArray
    tpot: FloatArray
    ttft_q: FloatArray
    tpot_q: FloatArray
    latency_log_sd: FloatArray
    latency_evidence: FloatArray
    latency_var: FloatArray
    displacement: FloatArray
    seen_at: FloatArray
    observations: FloatArray
    provider_factor: FloatArray  # the calibration each model's prior is scaled by
    success: FloatArray
    quality: FloatArray  # (cells, models)
    quality_var: FloatArray  # (cells, models): variance of the mean quality
    feedback_rate: FloatArray  # (cells,): answers that got a quality score, per answer
    value: FloatArray  # (cells, models): quality times the model's success rate
    evidence: FloatArray  # (cells, models): decayed count of outcomes
    task_evidence: FloatArray  # (cells,)
    quality_evidence: FloatArray  # (cells, models)
    tokens_sum: FloatArray  # (cells,): decayed sum of output tokens, all models
    tokens_weight: FloatArray  # (cells,): their decayed count


@dataclass(frozen=True)
class LearnerConfig:
    """How fast a learner believes and forgets (``Settings.learning`` holds the defaults)."""

    latency_half_life_s: float = 300.0
    quality_half_life_s: float = 86_400.0
    calibration_half_life_s: float = 3_600.0
    prior_strength: float = 5.0
    latency_prior_strength: float = 1.0  # answers' worth of the (calibrated) prior line in a model's fit
    calibration_strength: float = 1.0
    latency_log_sd_prior: float = 0.3
    success_prior: float = 0.98
    refresh_interval_s: float = 1.0
    surprise_z: float = 2.5
    surprise_forget: float = 0.5
    stale_after: float = 100.0  # latency observations elsewhere after which a model's fit counts half
    latency_z: float = 1.2815515655446004


def write_state(path: str | Path, state: LearnerState) -> None:
    """Write ``state`` (npz) atomically: a crash mid-write leaves the old file."""
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    arrays: dict[str, Any] = {
        "version": STATE_VERSION,
        "ids": np.array(state.ids),
        "tasks": np.array(state.tasks),
    }
    for name, sums in state.sums.items():
        for key, value in sums.arrays().items():
            arrays[f"{name}.{key}"] = value
        arrays[f"{name}.rate"] = sums.rate
    with tmp.open("wb") as handle:
        np.savez(handle, **arrays)
    tmp.replace(target)


def read_state(path: str | Path) -> LearnerState:
    """What :func:`write_state` wrote. Raises ValueError for a file of another version."""
    with np.load(Path(path), allow_pickle=False) as data:
        if int(data["version"]) != STATE_VERSION:
            raise ValueError(f"{path}: learned-state version {int(data['version'])} is not {STATE_VERSION}")
        sums = {}
        for name in SUM_NAMES:
            rate = float(data[f"{name}.rate"])
            s = DecayedSums(data[f"{name}.w"].shape, math.log(2.0) / rate, float(data[f"{name}.t0"]))
            s.w[...], s.s1[...], s.s2[...] = data[f"{name}.w"], data[f"{name}.s1"], data[f"{name}.s2"]
            sums[name] = s
        return LearnerState(tuple(str(i) for i in data["ids"]), tuple(str(t) for t in data["tasks"]), sums)


def index_map(source: Sequence[str], target: Sequence[str]) -> list[tuple[int, int]]:
    where = {name: i for i, name in enumerate(target)}
    return [(i, where[name]) for i, name in enumerate(source) if name in where]


def realign(
    other: DecayedSums, like: DecayedSums, model_map: list[tuple[int, int]], task_map: list[tuple[int, int]]
) -> DecayedSums:
    """``other``'s sums laid out in ``like``'s rows and columns."""
    out = DecayedSums(like.w.shape, math.log(2.0) / other.rate, other.t0)
    src_m = [s for s, _ in model_map]
    dst_m = [d for _, d in model_map]
    for name in ("w", "s1", "s2"):
        source, target = getattr(other, name), getattr(out, name)
        if source.ndim == 1:
            target[dst_m] = source[src_m]
        else:
            for s_task, d_task in task_map:
                target[d_task, dst_m] = source[s_task, src_m]
    return out


def align_state(state: LearnerState, like: LearnerState) -> LearnerState:
    """``state`` laid out in ``like``'s models and cells (matched by id and name; models or cells
    ``like`` does not know are dropped). Raises ValueError on another half-life or shape."""
    model_map = index_map(state.ids, like.ids)
    task_map = index_map(state.tasks, like.tasks)
    sums = {}
    for name, mine in like.sums.items():
        other = state.sums.get(name)
        if other is None:
            raise ValueError(f"{name}: missing from the state (saved by another version?)")
        if not math.isclose(other.rate, mine.rate) or other.w.ndim != mine.w.ndim:
            raise ValueError(f"{name}: sums of another half-life or shape cannot be merged")
        sums[name] = realign(other, mine, model_map, task_map)
    return LearnerState(like.ids, like.tasks, sums)
