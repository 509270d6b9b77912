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
from collections.abc import Mapping, Sequence
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
    spread of one observation in log space; ``value`` is expected quality times success.
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
    success: FloatArray
    quality: FloatArray  # (tasks, models)
    value: FloatArray  # (tasks, models): quality times the model's success rate
    evidence: FloatArray  # (tasks, models): decayed count of outcomes, drives exploration
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
        self.latency_z = latency_z
        self.prior_log_ttft = np.log(np.asarray(ttft_prior, dtype=np.float64))
        self.prior_log_tpot = np.log(np.asarray(tpot_prior, dtype=np.float64))
        self.prior_quality = np.broadcast_to(np.asarray(quality_prior, dtype=np.float64), (k, m)).copy()
        self.ttft = DecayedSums((m,), latency_half_life_s, t0)
        self.tpot = DecayedSums((m,), latency_half_life_s, t0)
        self.success = DecayedSums((k, m), latency_half_life_s, t0)
        self.quality = DecayedSums((k, m), quality_half_life_s, t0)
        self.version = 0
        self._refreshed_at = -math.inf
        self._est: Estimates | None = None

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
            self.ttft.add(model, math.log(ttft_s), t)
        if success and tpot_s is not None and tpot_s > 0:
            self.tpot.add(model, math.log(tpot_s), t)
        self._update_cell(model, task, t)

    def feedback(self, model: int, task: int, t: float, score: float) -> None:
        """A quality score in [0, 1] for one answer (explicit feedback or an evaluation hook)."""
        if not 0.0 <= score <= 1.0 or math.isnan(score):
            raise ValueError(f"score must be in [0, 1], got {score!r}")
        self.quality.add((task, model), score, t)
        self._update_cell(model, task, t)

    # --- reading -----------------------------------------------------------------------

    def estimates(self, t: float) -> Estimates:
        """Cached estimates; rebuilt in full when older than ``refresh_interval_s`` (decay)."""
        if self._est is None or t - self._refreshed_at >= self.refresh_interval_s:
            self._est = self._compute(t)
            self._refreshed_at = t
            self.version += 1
        return self._est

    def _compute(self, t: float) -> Estimates:
        ttft_mu, ttft_sd, lat_n = _log_normal(self.ttft, t, self.k, self.prior_log_ttft, self.sd0)
        tpot_mu, tpot_sd, _ = _log_normal(self.tpot, t, self.k, self.prior_log_tpot, self.sd0)
        fs, fq = self.success.factor(t), self.quality.factor(t)
        n = self.success.w * fs
        qn = self.quality.w * fq
        quality = (self.k * self.prior_quality + self.quality.s1 * fq) / (self.k + qn)
        success_per_model = _pool_rows(self.success, fs, self.k, self.success0)
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
            success=success_per_model,
            quality=quality,
            value=quality * success_per_model,
            evidence=n,
            task_evidence=n.sum(axis=1),
            quality_evidence=qn,
        )

    def _update_cell(self, model: int, task: int, t: float) -> None:
        """Bring one cell of the cached estimates up to date without a full rebuild."""
        est = self._est
        if est is None:
            return
        k = self.k
        for sums, prior, mu, sd, median, quantile in (
            (self.ttft, self.prior_log_ttft, est.ttft_log_mu, est.ttft_log_sd, est.ttft, est.ttft_q),
            (self.tpot, self.prior_log_tpot, est.tpot_log_mu, est.tpot_log_sd, est.tpot, est.tpot_q),
        ):
            f = sums.factor(t)
            w, s1, s2 = sums.w[model] * f, sums.s1[model] * f, sums.s2[model] * f
            mean = (k * prior[model] + s1) / (k + w)
            second = (k * (self.sd0**2 + prior[model] ** 2) + s2) / (k + w)
            mu[model] = mean
            sd[model] = math.sqrt(max(second - mean * mean, _MIN_LOG_SD**2))
            median[model] = math.exp(mean)
            quantile[model] = math.exp(mean + self.latency_z * sd[model])
        est.latency_evidence[model] = self.ttft.w[model] * self.ttft.factor(t)
        fs, fq = self.success.factor(t), self.quality.factor(t)
        cell = (task, model)
        n = self.success.w[cell] * fs
        old_n = est.evidence[cell]
        est.evidence[cell] = n
        est.task_evidence[task] += n - old_n
        qn = self.quality.w[cell] * fq
        est.quality[cell] = (k * self.prior_quality[cell] + self.quality.s1[cell] * fq) / (k + qn)
        est.quality_evidence[cell] = qn
        # An outage is the model's, whatever the task: success is pooled over task classes.
        column_w = self.success.w[:, model].sum() * fs
        est.success[model] = (k * self.success0 + self.success.s1[:, model].sum() * fs) / (k + column_w)
        est.value[:, model] = est.quality[:, model] * est.success[model]
        self.version += 1

    # --- sharing, saving ---------------------------------------------------------------

    def state(self) -> LearnerState:
        sums = {"ttft": self.ttft, "tpot": self.tpot, "success": self.success, "quality": self.quality}
        return LearnerState(self.ids, self.tasks, {name: s.copy() for name, s in sums.items()})

    def merge(self, state: LearnerState) -> None:
        """Add another learner's evidence (matched by model id and task name; others ignored)."""
        mine = {"ttft": self.ttft, "tpot": self.tpot, "success": self.success, "quality": self.quality}
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

    def save(self, path: str | Path) -> None:
        """Write the learned state (npz) atomically: a crash mid-write leaves the old file."""
        target = Path(path)
        tmp = target.with_name(target.name + ".tmp")
        arrays: dict[str, Any] = {"version": STATE_VERSION, "ids": np.array(self.ids), "tasks": np.array(self.tasks)}
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
                raise ValueError(f"{path}: learned-state version {int(data['version'])} is not {STATE_VERSION}")
            sums = {}
            for name in ("ttft", "tpot", "success", "quality"):
                rate = float(data[f"{name}.rate"])
                s = DecayedSums(data[f"{name}.w"].shape, math.log(2.0) / rate, float(data[f"{name}.t0"]))
                s.w[...], s.s1[...], s.s2[...] = data[f"{name}.w"], data[f"{name}.s1"], data[f"{name}.s2"]
                sums[name] = s
            return LearnerState(tuple(str(i) for i in data["ids"]), tuple(str(t) for t in data["tasks"]), sums)


def _log_normal(
    sums: DecayedSums, t: float, k: float, prior_mu: FloatArray, sd0: float
) -> tuple[FloatArray, FloatArray, FloatArray]:
    f = sums.factor(t)
    w = sums.w * f
    mean = (k * prior_mu + sums.s1 * f) / (k + w)
    second = (k * (sd0 * sd0 + prior_mu * prior_mu) + sums.s2 * f) / (k + w)
    sd = np.sqrt(np.maximum(second - mean * mean, _MIN_LOG_SD**2))
    return mean, sd, w


def _pool_rows(sums: DecayedSums, f: float, k: float, prior: float) -> FloatArray:
    w = sums.w.sum(axis=0) * f
    result: FloatArray = (k * prior + sums.s1.sum(axis=0) * f) / (k + w)
    return result


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
