"""What the router has learned: time-decayed sufficient statistics and the estimates they give.

Each cell holds exponentially decayed sums (weight, sum, sum of squares). Instead of a clock per
cell, every sum is kept in the units of one reference time ``t0``: an observation at time
``t`` adds ``exp(rate * (t - t0))``, and a read at ``t`` multiplies by ``exp(-rate * (t - t0))``.
That is the same as decaying every cell to ``t`` (what DESIGN.md describes with a last-update
time per cell), costs O(1) per observation, and makes merging two learners a plain addition once
one is brought to the other's ``t0``: replicas share state that way without a coordinator.

A learner keeps two sets of sums: its *local* evidence (what this replica observed itself, and
what it publishes) and the *view* its estimates read, the local evidence plus the other
replicas' (``set_remote``). Sums are linear, so the view never counts anything twice, and a
replica that lost the shared store only has to publish its whole local state again.

Latency (log time to first token, log time per output token) and success are per model and
move fast; quality is per (task class, model) and moves slowly. Estimates blend a prior worth
``prior_strength`` observations with the decayed evidence.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .hierarchy import CellLevels, shrunk_quality

__all__ = ["LATENCY_SUMS", "SUM_NAMES", "DecayedSums", "Estimates", "Learner", "LearnerState", "Surprise"]

FloatArray = npt.NDArray[np.float64]
_REBASE_EXPONENT = 200.0  # exp(200) ~ 7e86: far from overflow, even squared sums of log-latencies
_MIN_LOG_SD = 0.05
STATE_VERSION = 1
SUM_NAMES = ("ttft", "tpot", "success", "quality")
LATENCY_SUMS = ("ttft", "tpot")
_SURPRISE_LOG_MAX = 4096  # a consumer drains it every sync; a bound in case none does


class DecayedSums:
    """Decayed weight, sum and sum of squares over cells of any shape."""

    __slots__ = ("rate", "s1", "s2", "t0", "w")

    def __init__(self, shape: tuple[int, ...], half_life_s: float, t0: float = 0.0) -> None:
        self.rate = math.log(2.0) / half_life_s
        self.t0 = t0
        self.w = np.zeros(shape)
        self.s1 = np.zeros(shape)
        self.s2 = np.zeros(shape)

    def add(self, cell: int | tuple[int, int], x: float, t: float, weight: float = 1.0) -> None:
        exponent = self.rate * (t - self.t0)
        if exponent > _REBASE_EXPONENT:
            self.rebase(t)
            exponent = 0.0
        g = weight * math.exp(exponent)
        self.w[cell] += g
        self.s1[cell] += g * x
        self.s2[cell] += g * x * x

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
        self.w[cell] *= factor
        self.s1[cell] *= factor
        self.s2[cell] *= factor

    def arrays(self) -> dict[str, Any]:
        return {"w": self.w, "s1": self.s1, "s2": self.s2, "t0": self.t0}


@dataclass
class Estimates:
    """Current beliefs, as arrays aligned with the catalogue (and task classes for 2-D ones).

    Latencies are medians in seconds (the geometric mean of a log-normal); ``*_log_sd`` is the
    spread of one observation in log space; ``value`` is expected quality times success. The
    ``*_var`` arrays say what exploration can still learn: the variance of the mean log-latency
    and of the mean quality (the latter only matters as often as feedback arrives: with none,
    trying a model teaches nothing about its quality).
    """

    ttft: FloatArray
    tpot: FloatArray
    ttft_q: FloatArray  # the latency_z quantile, seconds: what max_latency_ms is held against
    tpot_q: FloatArray
    ttft_log_mu: FloatArray
    tpot_log_mu: FloatArray
    ttft_log_sd: FloatArray
    tpot_log_sd: FloatArray
    latency_evidence: FloatArray
    latency_var: FloatArray
    success: FloatArray
    quality: FloatArray  # (tasks, models)
    quality_var: FloatArray  # (tasks, models): variance of the mean quality
    feedback_rate: FloatArray  # (tasks,): answers that got a quality score, per answer
    value: FloatArray  # (tasks, models): quality times the model's success rate
    evidence: FloatArray  # (tasks, models): decayed count of outcomes
    task_evidence: FloatArray  # (tasks,)
    quality_evidence: FloatArray  # (tasks, models)


@dataclass
class LearnerState:
    """A learner's sums, addressable by model id and task name: what is saved and shared."""

    ids: tuple[str, ...]
    tasks: tuple[str, ...]
    sums: dict[str, DecayedSums]


@dataclass(frozen=True)
class Surprise:
    """A latency surprise: cell ``model`` of the ``name`` sums ("ttft" or "tpot") kept only
    ``factor`` of its evidence at time ``t``. Other replicas apply it to their own evidence."""

    name: str
    model: int
    t: float
    factor: float


class Learner:
    """Decayed statistics for ``len(ids)`` models and ``len(tasks)`` task classes.

        learner = Learner(ids, tasks, ttft_prior, tpot_prior, quality_prior)
        learner.observe(model=3, task=0, t=now, success=True, ttft_s=0.4, tpot_s=0.01)
        learner.estimates(now).ttft[3]

    A latency far outside what a model's cell expects (``surprise_z`` standard deviations in
    log space) multiplies that cell's past evidence by ``surprise_forget`` before it is added:
    a model that slows down fivefold is believed within a handful of requests, not after its
    whole history has decayed, while ordinary heavy-tail outliers (rare) barely matter. Set
    ``surprise_forget=1`` for plain decay. Forgetting is not linear, so it cannot travel inside
    the sums: each surprise is also appended to ``surprise_log`` for the shared state to tell
    the other replicas, which apply it to their own evidence with ``forget``.

    Sharing with other replicas (``adaptive_router.shared`` does this on a timer):

        publish = learner.local_state()   # this replica's own evidence
        learner.set_remote(others)        # the view = local + others, rebuilt at once
    """

    def __init__(
        self,
        ids: Sequence[str],
        tasks: Sequence[str],
        ttft_prior: FloatArray,
        tpot_prior: FloatArray,
        quality_prior: FloatArray,
        *,
        latency_half_life_s: float = 300.0,
        quality_half_life_s: float = 86_400.0,
        prior_strength: float = 5.0,
        latency_log_sd_prior: float = 0.5,
        success_prior: float = 0.98,
        refresh_interval_s: float = 1.0,
        surprise_z: float = 2.5,
        surprise_forget: float = 0.5,
        t0: float = 0.0,
        latency_z: float = 1.2815515655446004,
        cell_levels: CellLevels | None = None,
        cell_prior_strength: float | None = None,
    ) -> None:
        self.ids = tuple(ids)
        self.tasks = tuple(tasks)
        m, k = len(self.ids), len(self.tasks)
        self.k = prior_strength
        self.sd0 = latency_log_sd_prior
        self.success0 = success_prior
        self.refresh_interval_s = refresh_interval_s
        self.surprise_z = surprise_z
        self.surprise_forget = surprise_forget
        self.latency_z = latency_z
        # Fine cells under task classes: quality borrows strength from the coarser levels.
        self.cell_levels = cell_levels
        self.k_cell = cell_prior_strength
        self.prior_log_ttft = np.log(np.asarray(ttft_prior, dtype=np.float64))
        self.prior_log_tpot = np.log(np.asarray(tpot_prior, dtype=np.float64))
        self.prior_quality = np.broadcast_to(np.asarray(quality_prior, dtype=np.float64), (k, m)).copy()
        # The view: what estimates read (local + remote). Names kept: tests and tools read them.
        self.ttft = DecayedSums((m,), latency_half_life_s, t0)
        self.tpot = DecayedSums((m,), latency_half_life_s, t0)
        self.success = DecayedSums((k, m), latency_half_life_s, t0)
        self.quality = DecayedSums((k, m), quality_half_life_s, t0)
        self._local = {name: sums.copy() for name, sums in self._views().items()}
        self._remote: dict[str, DecayedSums] | None = None
        self.version = 0
        self.local_version = 0  # bumped whenever the local evidence changes: what to republish
        self.surprises = 0
        self.surprise_log: deque[Surprise] = deque(maxlen=_SURPRISE_LOG_MAX)
        self._refreshed_at = -math.inf
        self._est: Estimates | None = None
        self._dirty: set[int] = set()  # models observed since the estimates were computed

    # --- recording ---------------------------------------------------------------------

    def observe(
        self,
        model: int,
        task: int,
        t: float,
        success: bool,
        ttft_s: float | None = None,
        tpot_s: float | None = None,
    ) -> None:
        """One attempt's outcome. Latencies are recorded for successful attempts only."""
        self._add("success", (task, model), 1.0 if success else 0.0, t)
        if success and ttft_s is not None and ttft_s > 0:
            self._add_latency("ttft", self.prior_log_ttft, model, math.log(ttft_s), t)
        if success and tpot_s is not None and tpot_s > 0:
            self._add_latency("tpot", self.prior_log_tpot, model, math.log(tpot_s), t)
        self._dirty.add(model)
        self.version += 1

    def _add(self, name: str, cell: int | tuple[int, int], x: float, t: float) -> None:
        self._views()[name].add(cell, x, t)
        self._local[name].add(cell, x, t)
        self.local_version += 1

    def _add_latency(self, name: str, prior: FloatArray, model: int, x: float, t: float) -> None:
        if self.surprise_forget < 1.0:
            mu, sd, _ = _log_normal(self._views()[name], t, self.k, prior, self.sd0, model)
            if abs(x - float(mu)) > self.surprise_z * float(sd):
                # The whole view forgets, the other replicas' part included; they are told
                # through surprise_log so that their own copies forget too.
                self.forget(name, model, self.surprise_forget)
                self.surprises += 1
                self.surprise_log.append(Surprise(name, model, t, self.surprise_forget))
        self._add(name, model, x, t)

    def forget(self, name: str, model: int, factor: float) -> None:
        """Keep ``factor`` of model ``model``'s ``name`` evidence ("ttft" or "tpot"), in the local
        evidence and in the view: how a surprise seen by another replica reaches this one."""
        if name not in LATENCY_SUMS or not 0.0 <= factor <= 1.0:
            raise ValueError(f"cannot forget {factor!r} of {name!r}")
        self._views()[name].scale(model, factor)
        self._local[name].scale(model, factor)
        if self._remote is not None:
            self._remote[name].scale(model, factor)
        self._dirty.add(model)
        self.version += 1
        self.local_version += 1

    def feedback(self, model: int, task: int, t: float, score: float) -> None:
        """A quality score in [0, 1] for one answer (explicit feedback or an evaluation hook)."""
        if not 0.0 <= score <= 1.0 or math.isnan(score):
            raise ValueError(f"score must be in [0, 1], got {score!r}")
        self._add("quality", (task, model), score, t)
        self._dirty.add(model)
        self.version += 1

    # --- reading -----------------------------------------------------------------------

    def estimates(self, t: float) -> Estimates:
        """Current estimates. Rebuilt in full when older than ``refresh_interval_s`` (decay moves
        every cell); in between, only the columns of models observed since are recomputed."""
        if self._est is None or t - self._refreshed_at >= self.refresh_interval_s:
            self._est = self._compute(t, slice(None))
            self._refreshed_at = t
            self._dirty.clear()
        elif self._dirty:
            self._refresh_columns(self._est, t)
        return self._est

    def latest(self, t: float) -> Estimates:
        """The estimates as last computed, without catching up on recent observations: for
        bookkeeping that needs a rough figure (splitting a latency), not for decisions."""
        return self._est if self._est is not None else self.estimates(t)

    def _compute(self, t: float, models: slice | npt.NDArray[np.intp]) -> Estimates:
        """Estimates for the ``models`` columns (all of them, or one: the same arithmetic)."""
        k = self.k
        ttft_mu, ttft_sd, ttft_n = _log_normal(self.ttft, t, k, self.prior_log_ttft, self.sd0, models)
        tpot_mu, tpot_sd, tpot_n = _log_normal(self.tpot, t, k, self.prior_log_tpot, self.sd0, models)
        fs, fq = self.success.factor(t), self.quality.factor(t)
        n = self.success.w[:, models] * fs
        qn = self.quality.w[:, models] * fq
        if self.cell_levels is None:
            quality = (k * self.prior_quality[:, models] + self.quality.s1[:, models] * fq) / (k + qn)
            quality_var = quality * (1.0 - quality) / (k + qn)
        else:
            prior = self.prior_quality[0, models]
            quality, quality_var = shrunk_quality(
                self.quality.s1[:, models] * fq, qn, prior, self.cell_levels, k, self.k_cell
            )
        # An outage is the model's, whatever the task: success is pooled over task classes.
        pooled_n = n.sum(axis=0)
        success = (k * self.success0 + self.success.s1[:, models].sum(axis=0) * fs) / (k + pooled_n)
        lat_n = ttft_n + tpot_n
        feedback_rate = np.minimum(
            (self.quality.w.sum(axis=1) * fq) / np.maximum(self.success.w.sum(axis=1) * fs, 1.0), 1.0
        )
        return Estimates(
            ttft=np.exp(ttft_mu),
            tpot=np.exp(tpot_mu),
            ttft_q=np.exp(ttft_mu + self.latency_z * ttft_sd),
            tpot_q=np.exp(tpot_mu + self.latency_z * tpot_sd),
            ttft_log_mu=ttft_mu,
            tpot_log_mu=tpot_mu,
            ttft_log_sd=ttft_sd,
            tpot_log_sd=tpot_sd,
            latency_evidence=lat_n,
            latency_var=(ttft_sd * ttft_sd) / (k + lat_n),
            success=success,
            quality=quality,
            quality_var=quality_var,
            feedback_rate=feedback_rate,
            value=quality * success,
            evidence=n,
            task_evidence=self.success.w.sum(axis=1) * fs,
            quality_evidence=qn,
        )

    def _refresh_columns(self, est: Estimates, t: float) -> None:
        """Recompute the columns of the models observed since the last refresh (same arithmetic)."""
        columns = np.fromiter(self._dirty, dtype=np.intp, count=len(self._dirty))
        self._dirty.clear()
        fresh = self._compute(t, columns)
        for name, values in vars(fresh).items():
            target = getattr(est, name)
            if name in ("task_evidence", "feedback_rate"):
                target[...] = values
            elif target.ndim == 1:
                target[columns] = values
            else:
                target[:, columns] = values

    # --- sharing, saving ---------------------------------------------------------------

    def _views(self) -> dict[str, DecayedSums]:
        return {"ttft": self.ttft, "tpot": self.tpot, "success": self.success, "quality": self.quality}

    def state(self) -> LearnerState:
        """Everything the estimates read: the local evidence plus the other replicas'."""
        return LearnerState(self.ids, self.tasks, {name: s.copy() for name, s in self._views().items()})

    def local_state(self) -> LearnerState:
        """This replica's own evidence: what it publishes and saves (never the others')."""
        return LearnerState(self.ids, self.tasks, {name: s.copy() for name, s in self._local.items()})

    def align(self, state: LearnerState) -> LearnerState:
        """``state`` laid out in this learner's models and tasks (matched by id and name; models
        or tasks this learner does not know are dropped). Raises ValueError on another half-life."""
        model_map = _index_map(state.ids, self.ids)
        task_map = _index_map(state.tasks, self.tasks)
        sums = {}
        for name, like in self._local.items():
            other = state.sums[name]
            if not math.isclose(other.rate, like.rate) or other.w.ndim != like.w.ndim:
                raise ValueError(f"{name}: sums of another half-life or shape cannot be merged")
            sums[name] = _realign(other, like, model_map, task_map)
        return LearnerState(self.ids, self.tasks, sums)

    def merge(self, state: LearnerState) -> None:
        """Add evidence to the local state (matched by model id and task name; others ignored):
        a saved state being loaded, or another learner's outcomes adopted as this one's."""
        for name, sums in self.align(state).sums.items():
            self._local[name].merge(sums)
        self.local_version += 1
        self._rebuild_view()

    def set_local(self, state: LearnerState) -> None:
        """Replace the local evidence by ``state`` (a restarted replica resuming its own)."""
        for name, sums in self.align(state).sums.items():
            self._local[name].assign(sums)
        self.local_version += 1
        self._rebuild_view()

    def set_remote(self, state: LearnerState | None) -> None:
        """Replace the other replicas' contribution to the view by ``state`` (their sums, added
        up); ``None`` removes it. Estimates are rebuilt in full at the next read."""
        self._remote = None if state is None else self.align(state).sums
        self._rebuild_view()

    def _rebuild_view(self) -> None:
        for name, view in self._views().items():
            view.assign(self._local[name])
            if self._remote is not None:
                view.merge(self._remote[name])
        self._est = None
        self._dirty.clear()
        self.version += 1

    def reset(self) -> None:
        for sums in (*self._views().values(), *self._local.values()):
            for array in (sums.w, sums.s1, sums.s2):
                array[...] = 0.0
        self._remote = None
        self._est = None
        self.version += 1
        self.local_version += 1

    def save(self, path: str | Path) -> None:
        """Write the local state (npz) atomically: a crash mid-write leaves the old file. Only
        this replica's own evidence: the others' lives in their own copies."""
        target = Path(path)
        tmp = target.with_name(target.name + ".tmp")
        arrays: dict[str, Any] = {
            "version": STATE_VERSION,
            "ids": np.array(self.ids),
            "tasks": np.array(self.tasks),
        }
        for name, sums in self.local_state().sums.items():
            for key, value in sums.arrays().items():
                arrays[f"{name}.{key}"] = value
            arrays[f"{name}.rate"] = sums.rate
        with tmp.open("wb") as handle:
            np.savez(handle, **arrays)
        tmp.replace(target)

    @staticmethod
    def read_state(path: str | Path) -> LearnerState:
        with np.load(Path(path), allow_pickle=False) as data:
            if int(data["version"]) != STATE_VERSION:
                raise ValueError(
                    f"{path}: learned-state version {int(data['version'])} is not {STATE_VERSION}"
                )
            sums = {}
            for name in ("ttft", "tpot", "success", "quality"):
                rate = float(data[f"{name}.rate"])
                s = DecayedSums(data[f"{name}.w"].shape, math.log(2.0) / rate, float(data[f"{name}.t0"]))
                s.w[...], s.s1[...], s.s2[...] = data[f"{name}.w"], data[f"{name}.s1"], data[f"{name}.s2"]
                sums[name] = s
            return LearnerState(
                tuple(str(i) for i in data["ids"]), tuple(str(t) for t in data["tasks"]), sums
            )


def _log_normal(
    sums: DecayedSums,
    t: float,
    k: float,
    prior_mu: FloatArray,
    sd0: float,
    models: slice | int | npt.NDArray[np.intp],
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Mean and spread of log-latency, blending ``k`` prior pseudo-observations with the evidence."""
    f = sums.factor(t)
    w = sums.w[models] * f
    mu0 = prior_mu[models]
    mean = (k * mu0 + sums.s1[models] * f) / (k + w)
    second = (k * (sd0 * sd0 + mu0 * mu0) + sums.s2[models] * f) / (k + w)
    sd = np.sqrt(np.maximum(second - mean * mean, _MIN_LOG_SD**2))
    return mean, sd, w


def _index_map(source: Sequence[str], target: Sequence[str]) -> list[tuple[int, int]]:
    where = {name: i for i, name in enumerate(target)}
    return [(i, where[name]) for i, name in enumerate(source) if name in where]


def _realign(
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
