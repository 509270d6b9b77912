"""What the router has learned: time-decayed sufficient statistics and the estimates they give.

Each cell holds exponentially decayed sums (weight, sum, sum of squares). Instead of a clock per
cell, every sum is kept in the units of one reference time ``t0``: an observation at time
``t`` adds ``exp(rate * (t - t0))``, and a read at ``t`` multiplies by ``exp(-rate * (t - t0))``.
That is the same as decaying every cell to ``t`` (what DESIGN.md describes with a last-update
time per cell), costs O(1) per observation, and makes merging two learners a plain addition once
one is brought to the other's ``t0``: replicas share state that way without a coordinator.

Latency (log time to first token, log time per output token) and success are per model and
move fast; quality is per (task class, model) and moves slowly. Estimates blend a prior worth
``prior_strength`` observations with the decayed evidence.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["DecayedSums", "Estimates", "Learner", "LearnerState"]

FloatArray = npt.NDArray[np.float64]
_REBASE_EXPONENT = 200.0  # exp(200) ~ 7e86: far from overflow, even squared sums of log-latencies
_MIN_LOG_SD = 0.05
STATE_VERSION = 1


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
        g = math.exp(self.rate * (other.t0 - self.t0))
        self.w += g * other.w
        self.s1 += g * other.s1
        self.s2 += g * other.s2

    def copy(self) -> DecayedSums:
        twin = DecayedSums(self.w.shape, math.log(2.0) / self.rate, self.t0)
        twin.w[...], twin.s1[...], twin.s2[...] = self.w, self.s1, self.s2
        return twin

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


class Learner:
    """Decayed statistics for ``len(ids)`` models and ``len(tasks)`` task classes.

        learner = Learner(ids, tasks, ttft_prior, tpot_prior, quality_prior)
        learner.observe(model=3, task=0, t=now, success=True, ttft_s=0.4, tpot_s=0.01)
        learner.estimates(now).ttft[3]

    A latency far outside what a model's cell expects (``surprise_z`` standard deviations in
    log space) multiplies that cell's past evidence by ``surprise_forget`` before it is added:
    a model that slows down fivefold is believed within a handful of requests, not after its
    whole history has decayed, while ordinary heavy-tail outliers (rare) barely matter. Set
    ``surprise_forget=1`` for plain decay.
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
        self.prior_log_ttft = np.log(np.asarray(ttft_prior, dtype=np.float64))
        self.prior_log_tpot = np.log(np.asarray(tpot_prior, dtype=np.float64))
        self.prior_quality = np.broadcast_to(np.asarray(quality_prior, dtype=np.float64), (k, m)).copy()
        self.ttft = DecayedSums((m,), latency_half_life_s, t0)
        self.tpot = DecayedSums((m,), latency_half_life_s, t0)
        self.success = DecayedSums((k, m), latency_half_life_s, t0)
        self.quality = DecayedSums((k, m), quality_half_life_s, t0)
        self.version = 0
        self.surprises = 0
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
        self.success.add((task, model), 1.0 if success else 0.0, t)
        if success and ttft_s is not None and ttft_s > 0:
            self._add_latency(self.ttft, self.prior_log_ttft, model, math.log(ttft_s), t)
        if success and tpot_s is not None and tpot_s > 0:
            self._add_latency(self.tpot, self.prior_log_tpot, model, math.log(tpot_s), t)
        self._dirty.add(model)
        self.version += 1

    def _add_latency(self, sums: DecayedSums, prior: FloatArray, model: int, x: float, t: float) -> None:
        if self.surprise_forget < 1.0:
            mu, sd, _ = _log_normal(sums, t, self.k, prior, self.sd0, model)
            if abs(x - float(mu)) > self.surprise_z * float(sd):
                for array in (sums.w, sums.s1, sums.s2):
                    array[model] *= self.surprise_forget
                self.surprises += 1
        sums.add(model, x, t)

    def feedback(self, model: int, task: int, t: float, score: float) -> None:
        """A quality score in [0, 1] for one answer (explicit feedback or an evaluation hook)."""
        if not 0.0 <= score <= 1.0 or math.isnan(score):
            raise ValueError(f"score must be in [0, 1], got {score!r}")
        self.quality.add((task, model), score, t)
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

    def _compute(self, t: float, models: slice | npt.NDArray[np.intp]) -> Estimates:
        """Estimates for the ``models`` columns (all of them, or one: the same arithmetic)."""
        k = self.k
        ttft_mu, ttft_sd, ttft_n = _log_normal(self.ttft, t, k, self.prior_log_ttft, self.sd0, models)
        tpot_mu, tpot_sd, tpot_n = _log_normal(self.tpot, t, k, self.prior_log_tpot, self.sd0, models)
        fs, fq = self.success.factor(t), self.quality.factor(t)
        n = self.success.w[:, models] * fs
        qn = self.quality.w[:, models] * fq
        quality = (k * self.prior_quality[:, models] + self.quality.s1[:, models] * fq) / (k + qn)
        # An outage is the model's, whatever the task: success is pooled over task classes.
        pooled_n = n.sum(axis=0)
        success = (k * self.success0 + self.success.s1[:, models].sum(axis=0) * fs) / (k + pooled_n)
        lat_n = ttft_n + tpot_n
        feedback_rate = np.minimum(
            (self.quality.w.sum(axis=1) * fq) / np.maximum(self.success.w.sum(axis=1) * fs, 1.0), 1.0
        )
        quality_var = quality * (1.0 - quality) / (k + qn)
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

    def state(self) -> LearnerState:
        sums = {"ttft": self.ttft, "tpot": self.tpot, "success": self.success, "quality": self.quality}
        return LearnerState(self.ids, self.tasks, {name: s.copy() for name, s in sums.items()})

    def merge(self, state: LearnerState) -> None:
        """Add another learner's evidence (matched by model id and task name; others ignored)."""
        mine = {"ttft": self.ttft, "tpot": self.tpot, "success": self.success, "quality": self.quality}
        self.version += 1
        model_map = _index_map(state.ids, self.ids)
        task_map = _index_map(state.tasks, self.tasks)
        for name, sums in mine.items():
            sums.merge(_realign(state.sums[name], sums, model_map, task_map))
        self._est = None

    def reset(self) -> None:
        for sums in (self.ttft, self.tpot, self.success, self.quality):
            for array in (sums.w, sums.s1, sums.s2):
                array[...] = 0.0
        self._est = None
        self.version += 1

    def save(self, path: str | Path) -> None:
        """Write the learned state (npz) atomically: a crash mid-write leaves the old file."""
        target = Path(path)
        tmp = target.with_name(target.name + ".tmp")
        arrays: dict[str, Any] = {
            "version": STATE_VERSION,
            "ids": np.array(self.ids),
            "tasks": np.array(self.tasks),
        }
        for name, sums in self.state().sums.items():
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
