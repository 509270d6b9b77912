"""What the router has learned: time-decayed sufficient statistics and the estimates they give.

Every statistic is a set of exponentially decayed sums (``_sums.DecayedSums``): O(1) per
observation, and two learners merge by plain addition, which is how replicas share state.

A learner keeps its *local* evidence (what this replica observed and publishes) and the *view*
its estimates read, local plus the other replicas' (``set_remote``): sums are linear, so nothing
counts twice, and a replica that lost the shared store just publishes its local state again.

**Latency** is a line per model, ``latency(N) = ttft + tpot * N`` for an answer of N output
tokens, fitted by decayed least squares to what requests show and never split by a prior: a
non-streamed answer is one point (N, total time), a streamed one adds its time to first token as
the point (0, ttft). Answers of varied lengths separate the two terms; answers of one length fix
the line where they are, which is where predictions are needed. The sums behind the fit are
``lat_n`` (token counts: weight, sum, sum of squares), ``lat_y`` (latencies) and ``lat_cross``
(their sum, whose square gives the cross term), all plain decayed sums.

The prior is the catalogue's line *calibrated by provider*: ``calib`` keeps, per model and with
a long half-life, the log ratio of what it measured to what the public figures predicted;
pooled over the models one provider serves, it scales the priors of that provider's untried
models at once (an endpoint 50x faster than the public figures), and each model's own ratio,
shrunk toward its provider's, scales its own prior. Its evidence then takes over.

Adapting: a latency far outside what a model's fit expects (``surprise_z`` standard deviations
of its log residuals) keeps only ``surprise_forget`` of that model's fitted evidence, so a
fivefold slowdown is believed within a few answers. Forgetting is not linear, so it cannot
travel inside the sums: each surprise is also appended to ``surprise_log`` for the shared state
to tell the other replicas. A model whose recent level sits above its long-run level (``calib``)
is *displaced*; ``Estimates.displacement`` and ``seen_at`` let the exploration policies try it
again once enough requests went elsewhere, so a model that recovered regains its traffic.

Success is per model (pooled over cells); quality is per (cell, model) and moves slowly; output
lengths are kept per (cell, model) so that predictions use the lengths answers really have.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ._columns import DISPLACED, latency_columns
from ._hierarchy import CellLevels, shrunk_quality
from ._latency_fit import REF_TOKENS, TOKEN_SCALE
from ._row_fit import fit_row
from ._shift import Answer, ShiftDetector
from ._sums import (
    FIT_SUMS,
    LATENCY_SUMS,
    SUM_NAMES,
    DecayedSums,
    Estimates,
    LearnerConfig,
    LearnerState,
    Surprise,
    align_state,
    read_state,
    sum_shapes,
    write_state,
)
from ._sweep import ColumnSweep, write_columns
from ._totals import ViewTotals

__all__ = ["Learner"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]
_CALIBRATION_TOLERANCE = 0.01  # log units: a provider's pooled speed moving more rebuilds in full
_SHIFT_DRIFT = 1.0  # CUSUM allowance, in standard deviations of one answer's log latency
_SHIFT_KEEP = 1.0  # answers' worth of the old regime kept when a persistent shift is found
_SURPRISE_LOG_MAX = 4096  # a consumer drains it every sync; a bound in case none does
_SWEEP_COLUMNS = 512  # columns one recorded outcome may recompute (see _sweep)
_SWEEP_BEHIND = 2.0  # intervals without a sweep step (no outcomes recorded): a read takes one
_REBUILD_IDLE = 10.0  # intervals without one: a read rebuilds every column (an idle learner)


class Learner:
    """Decayed statistics for ``len(ids)`` models and ``len(tasks)`` cells.

        learner = Learner(ids, cells, ttft_prior, tpot_prior, quality_prior)
        learner.observe(model=3, task=0, t=now, success=True, latency_s=0.9, tokens=40)
        learner.estimates(now).ttft[3]

    ``groups`` gives each model's provider (an index; models of one provider share their
    calibration). Sharing with other replicas (``adaptive_router.shared`` does this on a timer):

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
        groups: Sequence[int] | IntArray | None = None,
        t0: float = 0.0,
        config: LearnerConfig | None = None,
        cell_levels: CellLevels | None = None,
        cell_prior_strength: float | None = None,
        **options: float,
    ) -> None:
        cfg = config or LearnerConfig()
        if options:
            cfg = LearnerConfig(**{**cfg.__dict__, **options})
        self.config = cfg
        self.ids = tuple(ids)
        self.tasks = tuple(tasks)
        m, k = len(self.ids), len(self.tasks)
        self.k = cfg.prior_strength
        self.sd0 = cfg.latency_log_sd_prior
        self.success0 = cfg.success_prior
        self.refresh_interval_s = cfg.refresh_interval_s
        self.surprise_z = cfg.surprise_z
        self.surprise_forget = cfg.surprise_forget
        self.latency_z = cfg.latency_z
        # Fine cells under task classes: quality borrows strength from the coarser levels.
        self.cell_levels = cell_levels
        self.k_cell = cell_prior_strength
        self.prior_ttft = np.asarray(ttft_prior, dtype=np.float64).copy()
        self.prior_tpot = np.asarray(tpot_prior, dtype=np.float64).copy()
        self._priors = (self.prior_ttft, self.prior_tpot)
        self._prior_ttft, self._prior_tpot = self.prior_ttft.data, self.prior_tpot.data  # float reads
        self.prior_quality = np.broadcast_to(np.asarray(quality_prior, dtype=np.float64), (k, m)).copy()
        self.groups: IntArray = np.zeros(m, dtype=np.intp) if groups is None else np.asarray(groups, np.intp)
        self._n_groups = int(self.groups.max()) + 1 if m else 1
        half_lives = {
            **dict.fromkeys(("lat_n", "lat_y", "lat_cross", "tokens", "success"), cfg.latency_half_life_s),
            "calib": cfg.calibration_half_life_s,
            "quality": cfg.quality_half_life_s,
        }
        shapes = sum_shapes(m, k)
        # The view: what estimates read (local + remote).
        self._view = {name: DecayedSums(shapes[name], half_lives[name], t0) for name in SUM_NAMES}
        self._local = {name: sums.copy() for name, sums in self._view.items()}
        self._remote: dict[str, DecayedSums] | None = None
        self.version = 0
        self.local_version = 0  # bumped whenever the local evidence changes: what to republish
        self.surprises = 0
        self.surprise_log: deque[Surprise] = deque(maxlen=_SURPRISE_LOG_MAX)
        self._sweep = ColumnSweep(m, cfg.refresh_interval_s, _SWEEP_COLUMNS)
        self._group_rows: dict[int, IntArray] = {}  # each provider's models, as first needed
        self._est: Estimates | None = None
        self._count = 0.0  # latency observations so far (this process): exploration's clock
        self._seen_at = np.full(m, np.inf)
        self._group_log: FloatArray | None = None  # each provider's pooled log ratio, as last pooled
        self._totals = ViewTotals(self._view, self.groups, self._n_groups)
        self._stale: set[int] = set()  # rows changed without a time (another replica's surprise)
        # Shifts no single answer shows (under the surprise limit, or hidden in noise).
        self._shifts = ShiftDetector(drift=_SHIFT_DRIFT, threshold=2.0 * cfg.surprise_z)

    # Read-only views kept for tools and tests that look at the sums by name.
    @property
    def success(self) -> DecayedSums:
        return self._view["success"]

    @property
    def quality(self) -> DecayedSums:
        return self._view["quality"]

    def sums(self, name: str) -> DecayedSums:
        """The view's sums called ``name`` (one of ``SUM_NAMES``)."""
        return self._view[name]

    # --- recording ---------------------------------------------------------------------

    def observe(
        self,
        model: int,
        task: int,
        t: float,
        success: bool,
        ttft_s: float | None = None,
        tpot_s: float | None = None,
        *,
        latency_s: float | None = None,
        tokens: int | None = None,
    ) -> None:
        """One attempt's outcome. Latencies are recorded for successful attempts only.

        A non-streamed answer gives ``latency_s`` and ``tokens``; a streamed one adds ``ttft_s``.
        ``tpot_s`` (with ``ttft_s``) stands for a 100-token answer of that speed.
        """
        self._add("success", (task, model), 1.0 if success else 0.0, t)
        if success:
            points: list[tuple[float, float]] = []
            if ttft_s is not None and ttft_s > 0:
                points.append((0.0, ttft_s))
                if tpot_s is not None and tpot_s > 0 and latency_s is None:
                    points.append((1.0, ttft_s + tpot_s * TOKEN_SCALE))
            if latency_s is not None and latency_s > 0 and tokens is not None and tokens >= 0:
                points.append((tokens / TOKEN_SCALE, latency_s))
                self._add("tokens", (task, model), float(tokens), t)
            if points:
                self._observe_latency(model, t, points)
        self._touch(model, t, task)

    def _add(self, name: str, cell: int | tuple[int, int], x: float, t: float, weight: float = 1.0) -> None:
        self._totals.added(name, cell, self._view[name].add_with(self._local[name], cell, x, t, weight), x)
        self.local_version += 1

    def _touch(self, model: int, t: float, cell: int | None = None, quality: bool = False) -> None:
        """Model ``model``'s evidence changed at ``t``: its estimates follow now (one row), and
        the sweep recomputes its next slice of columns when one is due (see ``_sweep``); when
        its provider's calibration moved, that provider's latency columns follow at once."""
        self.version += 1
        est = self._est
        if est is None:
            return
        if self._calibration_moved(model, t):
            self._rescale(est, self.groups[model], t)
        self._sweep_step(est, t)
        self._refresh_one(est, model, t, cell)
        if quality:
            self._refresh_quality(est, model, t)

    def _rescale(self, est: Estimates, group: int, t: float) -> None:
        """Provider ``group``'s pooled calibration moved: pool afresh, and its models' latency
        columns follow now (1-D work over its models; nothing per cell depends on it)."""
        rows = self._group_rows.get(group)
        if rows is None:
            rows = self._group_rows[group] = np.flatnonzero(self.groups == group)
        factor = self._calibration(t, rows, pooled=True)
        for name, value in latency_columns(self._view, t, rows, factor, self._priors, self.config).items():
            getattr(est, name)[rows] = value

    def _sweep_step(self, est: Estimates, t: float) -> None:
        """Recompute the sweep's next columns at ``t``, if a sweep is due or in progress."""
        columns = self._sweep.next_columns(t)
        if columns is None:
            return
        if columns.start == 0 and self.cell_levels is not None:
            self._refit_levels(t)
        write_columns(est, self._compute(t, columns, pooled=True), columns)

    def _observe_latency(self, model: int, t: float, points: list[tuple[float, float]]) -> None:
        stale = self._count + 1.0 - self._seen_at[model]  # requests since it was last measured
        patience = self.config.stale_after
        if patience > 0 and math.isfinite(stale) and stale > 1.0:
            # What was measured long ago may no longer hold: it counts for less against what is
            # measured now (a model tried again after a slowdown shows its recovery at once).
            self._discount(model, t, patience / (patience + stale - 1.0))
        ttft, tpot, sd = self._model_line(model, t)
        x, y = points[-1]  # the whole answer (or the first token when that is all there is)
        resid = math.log(y) - math.log(ttft + tpot * TOKEN_SCALE * x)
        limit = self.surprise_z * sd
        if self.surprise_forget < 1.0:
            # A run of answers off in one direction (each counted up to the surprise limit, so
            # that one outlier alone is not a run): the fit moves to the new regime at once.
            regime = self._shifts.observe(model, max(-self.surprise_z, min(resid / sd, self.surprise_z)))
            if regime is not None:
                self._shifted(model, t, regime)
            elif abs(resid) > limit:
                # The further off, the more is forgotten: ``surprise_forget`` at the limit, its
                # square at twice the limit. The whole view forgets, the other replicas' part
                # included; they are told through surprise_log so that their copies forget too.
                self._surprised(model, t, self.surprise_forget ** (abs(resid) / limit))
        prior = self.prior_ttft[model] + self.prior_tpot[model] * TOKEN_SCALE * x
        self._add("calib", model, math.log(y) - math.log(prior), t)
        weight = 1.0 / len(points)  # one answer is one unit of evidence, however many points
        for x, y in points:
            self._add("lat_n", model, x, t, weight)
            self._add("lat_y", model, y, t, weight)
            self._add("lat_cross", model, x + y, t, weight)
        if self.surprise_forget < 1.0:
            self._shifts.remember(model, (t, tuple(points), weight))
        self._count += 1.0
        self._seen_at[model] = self._count

    def _surprised(self, model: int, t: float, factor: float) -> None:
        self._forget(model, factor)
        self.surprises += 1
        self.surprise_log.append(Surprise("latency", model, t, factor))

    def _shifted(self, model: int, t: float, regime: list[Answer]) -> None:
        """A persistent shift: keep ``regime`` (the answers since it began) in full and about one
        answer's worth of the evidence before it, so the fit moves to where the model is now."""
        n = self._view["lat_n"]
        before = float(n.w[model]) * n.factor(t) - sum(weight * len(pts) for _, pts, weight in regime)
        factor = min(self.surprise_forget, _SHIFT_KEEP / max(before, _SHIFT_KEEP))
        self._surprised(model, t, factor)
        for at, pts, weight in regime:  # what forgetting took from them, given back
            for x, y in pts:
                self._add("lat_n", model, x, at, weight * (1.0 - factor))
                self._add("lat_y", model, y, at, weight * (1.0 - factor))
                self._add("lat_cross", model, x + y, at, weight * (1.0 - factor))

    def _model_line(self, model: int, t: float) -> tuple[float, float, float]:
        """One model's fitted ttft, tpot and log spread now (what a surprise is judged against)."""
        ttft, tpot, sd, _, _, _ = self._line_one(model, t)
        return ttft, tpot, sd

    def _line_one(self, model: int, t: float) -> tuple[float, float, float, float, float, float]:
        """The arithmetic of ``_calibration`` and ``fit_lines`` for one row, in Python floats
        (``fit_row``). Returns ttft, tpot, log spread, evidence weight, mean x and the prior's scale."""
        calib, kf = self._view["calib"], self.config.calibration_strength
        fc = calib.factor(t)
        cw, cs1, _ = calib.row(model)
        group_log = float(self._group_log[self.groups[model]]) if self._group_log is not None else 0.0
        factor = math.exp((kf * group_log + cs1 * fc) / (kf + cw * fc))
        n, y, c = self._view["lat_n"], self._view["lat_y"], self._view["lat_cross"]  # FIT_SUMS
        f = n.factor(t)
        (w, sx, sxx), (_, sy, syy) = n.row(model), y.row(model)  # unpacked: no generator per row
        w, sx, sxx, sy, syy = w * f, sx * f, sxx * f, sy * f, syy * f
        sxy = 0.5 * (c.row(model)[2] * f - sxx - syy)
        # The prior line's weight shrinks as the model's own long-run record grows: once it has a
        # history, a few answers after a surprise decide its level, not the prior.
        k = self.config.latency_prior_strength
        p0 = self._prior_ttft[model] * factor
        p1 = p0 + self._prior_tpot[model] * factor * REF_TOKENS
        ttft, tpot, sd = fit_row((w, sx, sxx, sy, syy, sxy), k, k / (1.0 + cw * fc), p0, p1, self.sd0)
        return ttft, tpot, sd, w, sx / max(w, 1e-12), factor

    def _discount(self, model: int, t: float, factor: float) -> None:
        if factor < 0.99:
            self._shifts.reset(model)  # measured again after long: runs against the old fit are moot
            self._forget(model, factor)
            self.surprise_log.append(Surprise("latency", model, t, factor))

    def forget(self, name: str, model: int, factor: float) -> None:
        """Keep ``factor`` of model ``model``'s fitted latency evidence (``name`` "latency"), in
        the local evidence and in the view: how a surprise seen by another replica reaches this one."""
        if name not in LATENCY_SUMS or not 0.0 <= factor <= 1.0:
            raise ValueError(f"cannot forget {factor!r} of {name!r}")
        self._shifts.reset(model)  # another replica saw a new regime: runs against the old fit are moot
        self._forget(model, factor)
        self.version += 1
        self._stale.add(model)  # no clock here: its row follows at the next read

    def _forget(self, model: int, factor: float) -> None:
        for sums in FIT_SUMS:
            self._view[sums].scale(model, factor)
            self._local[sums].scale(model, factor)
            if self._remote is not None:
                self._remote[sums].scale(model, factor)
        self.local_version += 1

    def feedback(self, model: int, task: int, t: float, score: float, weight: float = 1.0) -> None:
        """A quality score in [0, 1] for one answer (explicit feedback or an evaluator, whose
        ``weight`` says how many answers' worth of evidence it is)."""
        if not 0.0 <= score <= 1.0 or math.isnan(score):
            raise ValueError(f"score must be in [0, 1], got {score!r}")
        self._add("quality", (task, model), score, t, weight)
        self._touch(model, t, task, quality=True)

    # --- reading -----------------------------------------------------------------------

    def estimates(self, t: float) -> Estimates:
        """Current estimates, read at no cost: outcomes update their model's row and sweep the
        columns (``_sweep_step``); a read sweeps only when no outcomes arrive, in full when idle."""
        est = self._est
        behind = self._sweep.age(t) / self.refresh_interval_s
        if est is None or behind >= _REBUILD_IDLE:
            self._totals.sync()  # a full rebuild also clears the running totals' rounding
            est = self._est = self._compute(t, slice(None))
            self._sweep.rebuilt(t)
            self._stale.clear()
            est.observations[0] = self._count
            return est
        if behind >= _SWEEP_BEHIND:  # no outcome recorded lately: the reads keep the sweep going
            self._sweep_step(est, t)
        if self._stale:
            for model in self._stale:
                self._refresh_one(est, model, t)
            self._stale.clear()
        est.observations[0] = self._count
        return est

    def refresh(self, t: float) -> Estimates:
        """Estimates rebuilt in full now: an exact function of the sums at ``t``."""
        self._est = None
        return self.estimates(t)

    def _calibration_moved(self, model: int, t: float) -> bool:
        """Whether ``model``'s provider's pooled calibration moved more than 1% since it was last
        pooled: then every one of its models' priors moves, and the estimates are rebuilt in
        full (a new endpoint's first answers re-scale its untried models at once)."""
        if self._group_log is None:
            return True
        group = self.groups[model]
        now = self._totals.group_log(group, t, self.config.calibration_strength)
        return abs(now - float(self._group_log[group])) > _CALIBRATION_TOLERANCE

    def _calibration(self, t: float, models: slice | IntArray, pooled: bool) -> FloatArray:
        """Each model's prior scale: its own long-run log ratio to the public figures, shrunk
        toward its provider's pooled ratio, which is itself shrunk toward 1. The providers'
        ratios are pooled afresh when ``pooled`` (a full refresh), else the last pooling is used."""
        calib = self._view["calib"]
        f = calib.factor(t)
        kf = self.config.calibration_strength
        if pooled or self._group_log is None:
            self._group_log = self._totals.group_logs(t, kf)
        w, s1 = calib.w[models] * f, calib.s1[models] * f
        own_log = (kf * self._group_log[self.groups[models]] + s1) / (kf + w)
        result: FloatArray = np.exp(own_log)
        return result

    def provider_factors(self, t: float) -> FloatArray:
        """Each provider's speed against the public figures (1: as published), pooled now."""
        factors: FloatArray = np.exp(self._totals.group_logs(t, self.config.calibration_strength))
        return factors

    def _compute(self, t: float, models: slice | IntArray, *, pooled: bool | None = None) -> Estimates:
        """Estimates for the ``models`` columns (all of them, or some: the same arithmetic).
        Every column (``slice(None)``) pools providers and cells afresh from the sums; some
        columns read the running totals for the cells (and pool providers when ``pooled``)."""
        k = self.k
        whole = isinstance(models, slice) and models == slice(None)
        factor = self._calibration(t, models, pooled=whole if pooled is None else pooled)
        latency = latency_columns(self._view, t, models, factor, self._priors, self.config)
        success_s, quality_s = self._view["success"], self._view["quality"]
        fs, fq = success_s.factor(t), quality_s.factor(t)
        n = success_s.w[:, models] * fs
        qn = quality_s.w[:, models] * fq
        if self.cell_levels is None:
            quality = (k * self.prior_quality[:, models] + quality_s.s1[:, models] * fq) / (k + qn)
            quality_var = quality * (1.0 - quality) / (k + qn)
        else:
            prior = self.prior_quality[0, models]
            if whole:  # every column: the cells' difficulty is refitted
                self.cell_levels.refit(quality_s.s1 * fq, qn, prior, k)
            quality, quality_var = shrunk_quality(
                quality_s.s1[:, models] * fq, qn, prior, self.cell_levels, k, self.k_cell
            )
        # An outage is the model's, whatever the cell: success is pooled over cells.
        pooled_n = n.sum(axis=0)
        success = (k * self.success0 + success_s.s1[:, models].sum(axis=0) * fs) / (k + pooled_n)
        task_evidence, feedback_rate, tokens_sum, tokens_weight = self._cell_pool(t, exact=whole)
        return Estimates(
            **latency,
            seen_at=self._seen_at[models].copy(),
            observations=np.array([self._count]),
            success=success,
            quality=quality,
            quality_var=quality_var,
            feedback_rate=feedback_rate,
            value=quality * success,
            evidence=n,
            task_evidence=task_evidence,
            quality_evidence=qn,
            tokens_sum=tokens_sum,
            tokens_weight=tokens_weight,
        )

    def _cell_pool(self, t: float, exact: bool) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
        """Per cell, pooled over models: outcomes, feedback per outcome, output tokens and their
        count. ``exact``: added up from the sums; else read off the running totals (O(cells))."""
        success_s, quality_s, tokens_s = (self._view[name] for name in ("success", "quality", "tokens"))
        fs, fq, ft = success_s.factor(t), quality_s.factor(t), tokens_s.factor(t)
        if exact:
            n, q = success_s.w.sum(axis=1), quality_s.w.sum(axis=1)
            tokens, tokens_w = tokens_s.s1.sum(axis=1), tokens_s.w.sum(axis=1)
        else:
            tot = self._totals
            n, q, tokens, tokens_w = tot.cell_n, tot.cell_q, tot.cell_tokens, tot.cell_tokens_w
        n = n * fs
        return n, np.minimum((q * fq) / np.maximum(n, 1.0), 1.0), tokens * ft, tokens_w * ft

    def _refit_levels(self, t: float) -> None:
        """The cells' difficulty, fitted to every column's quality sums now (a sweep's start)."""
        if self.cell_levels is not None and self.cell_levels.difficulty:
            quality_s = self._view["quality"]
            fq = quality_s.factor(t)
            self.cell_levels.refit(quality_s.s1 * fq, quality_s.w * fq, self.prior_quality[0], self.k)

    def _refresh_one(self, est: Estimates, m: int, t: float, cell: int | None = None) -> None:
        """``_compute``'s arithmetic for model ``m``'s row at ``t``, written into ``est`` in place
        (what recording one outcome does): the latency line in Python floats, the success and
        cell ``cell``'s pooled values from the running totals (every cell when ``None``), so no
        sum runs over every model. Its quality column moves with its feedback (``feedback``
        refreshes it); other cells' pooled values and decay follow with the sweep (``_sweep``)."""
        k = self.k
        ttft, tpot, sd, w, mean_x, factor = self._line_one(m, t)
        est.ttft[m], est.tpot[m], est.latency_log_sd[m] = ttft, tpot, sd
        quantile = math.exp(self.latency_z * sd)
        est.ttft_q[m], est.tpot_q[m] = ttft * quantile, tpot * quantile
        est.latency_evidence[m], est.latency_var[m], est.provider_factor[m] = w, sd * sd / (k + w), factor
        tokens_at = mean_x * TOKEN_SCALE
        prior_line = (self.prior_ttft[m] + self.prior_tpot[m] * tokens_at) * factor
        moved = math.log((ttft + tpot * tokens_at) / prior_line) - DISPLACED if w > 0 else 0.0
        est.displacement[m] = max(moved, 0.0)
        est.seen_at[m] = self._seen_at[m]
        success_s, tot = self._view["success"], self._totals
        fs = success_s.factor(t)
        success = (k * self.success0 + float(tot.model_ok[m]) * fs) / (k + float(tot.model_n[m]) * fs)
        est.success[m] = success
        np.multiply(success_s.w[:, m], fs, out=est.evidence[:, m])
        np.multiply(est.quality[:, m], success, out=est.value[:, m])
        cells = range(len(self.tasks)) if cell is None else (cell,)
        fq, ft = self._view["quality"].factor(t), self._view["tokens"].factor(t)
        for c in cells:
            n = est.task_evidence[c] = float(tot.cell_n[c]) * fs
            est.feedback_rate[c] = min(float(tot.cell_q[c]) * fq / max(n, 1.0), 1.0)
            est.tokens_sum[c] = float(tot.cell_tokens[c]) * ft
            est.tokens_weight[c] = float(tot.cell_tokens_w[c]) * ft

    def _refresh_quality(self, est: Estimates, m: int, t: float) -> None:
        """Model ``m``'s quality column (every cell), its variance and value, as ``_compute``."""
        k, quality_s = self.k, self._view["quality"]
        fq = quality_s.factor(t)
        qn = est.quality_evidence[:, m]
        np.multiply(quality_s.w[:, m], fq, out=qn)
        if self.cell_levels is None:
            quality = (k * self.prior_quality[:, m] + quality_s.s1[:, m] * fq) / (k + qn)
            quality_var = quality * (1.0 - quality) / (k + qn)
        else:
            column = np.array([m])
            q2, v2 = shrunk_quality(
                quality_s.s1[:, column] * fq,
                qn[:, None],
                self.prior_quality[0, column],
                self.cell_levels,
                k,
                self.k_cell,
            )
            quality, quality_var = q2[:, 0], v2[:, 0]
        est.quality[:, m], est.quality_var[:, m] = quality, quality_var
        np.multiply(quality, est.success[m], out=est.value[:, m])

    # --- sharing, saving ---------------------------------------------------------------

    def state(self) -> LearnerState:
        """Everything the estimates read: the local evidence plus the other replicas'."""
        return LearnerState(self.ids, self.tasks, {name: s.copy() for name, s in self._view.items()})

    def local_state(self) -> LearnerState:
        """This replica's own evidence: what it publishes and saves (never the others')."""
        return LearnerState(self.ids, self.tasks, {name: s.copy() for name, s in self._local.items()})

    def align(self, state: LearnerState) -> LearnerState:
        """``state`` laid out in this learner's models and cells (matched by id and name; models
        or cells this learner does not know are dropped). Raises ValueError on another half-life."""
        return align_state(state, LearnerState(self.ids, self.tasks, self._local))

    def merge(self, state: LearnerState) -> None:
        """Add evidence to the local state (matched by model id and cell name; others ignored):
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
        for name, view in self._view.items():
            view.assign(self._local[name])
            if self._remote is not None:
                view.merge(self._remote[name])
        self._est = None
        self._group_log = None
        self._stale.clear()
        self._totals.sync()
        self.version += 1

    def reset(self) -> None:
        for sums in (*self._view.values(), *self._local.values()):
            for array in (sums.w, sums.s1, sums.s2):
                array[...] = 0.0
        self._remote = None
        self._est = None
        self._totals.sync()
        self._seen_at[...] = np.inf
        self._shifts.reset()
        self.version += 1
        self.local_version += 1

    def save(self, path: str | Path) -> None:
        """Write the local state (npz) atomically: a crash mid-write leaves the old file. Only
        this replica's own evidence: the others' lives in their own copies."""
        write_state(path, self.local_state())

    @staticmethod
    def read_state(path: str | Path) -> LearnerState:
        return read_state(path)
