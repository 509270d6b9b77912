"""Keeping every column of a learner's estimates current without a full rebuild in a request.

Recording an outcome updates its model's column at once (``Learner._refresh_one``); what moves
every column is time (decay) and what is pooled over models (a provider's calibration, the
cells' difficulty). A full rebuild of all of them costs O(cells x models) and once ran inside
whichever decision came after ``refresh_interval_s``: 0.7 ms at 300 models, tens of
milliseconds at 10,000. A ``ColumnSweep`` spreads that work instead: once per interval a sweep
starts, and each recorded outcome after it recomputes the next ``chunk`` columns, so every
column is at most about one interval plus one sweep old, and no single request pays for more
than one chunk.
"""

from __future__ import annotations

import math

from ._sums import Estimates

__all__ = ["CELL_FIELDS", "MATRIX_FIELDS", "MODEL_FIELDS", "ColumnSweep", "write_columns"]

# The fields of ``Estimates`` by shape: per model, per (cell, model), per cell.
MODEL_FIELDS = (
    "ttft",
    "tpot",
    "ttft_q",
    "tpot_q",
    "latency_log_sd",
    "latency_evidence",
    "latency_var",
    "displacement",
    "seen_at",
    "provider_factor",
    "success",
)
MATRIX_FIELDS = ("quality", "quality_var", "value", "evidence", "quality_evidence")
CELL_FIELDS = ("feedback_rate", "task_evidence", "tokens_sum", "tokens_weight")


class ColumnSweep:
    """Which columns to recompute next: ``chunk`` at a time, a new sweep every ``interval``.

    ``started`` is when the sweep in progress (or the last one) began: no column is older than
    that, except those a sweep in progress has not reached yet (older by one interval at most).
    """

    __slots__ = ("chunk", "cursor", "interval", "n", "started")

    def __init__(self, n: int, interval: float, chunk: int) -> None:
        self.n, self.interval, self.chunk = n, interval, max(1, chunk)
        self.started = -math.inf
        self.cursor = n  # the next column; n: no sweep in progress

    def rebuilt(self, t: float) -> None:
        """Every column was just computed at ``t``."""
        self.started, self.cursor = t, self.n

    def request(self) -> None:
        """Start a new sweep as soon as the one in progress (if any) ends."""
        self.started = -math.inf

    def age(self, t: float) -> float:
        return t - self.started

    def next_columns(self, t: float) -> slice | None:
        """The columns to recompute at ``t`` (the first of a new sweep when one is due), or None."""
        if self.cursor >= self.n:
            if t - self.started < self.interval:
                return None
            self.started, self.cursor = t, 0
        start = self.cursor
        self.cursor = min(start + self.chunk, self.n)
        return slice(start, self.cursor)


def write_columns(est: Estimates, part: Estimates, columns: slice) -> None:
    """Copy ``part`` (estimates for ``columns`` only) into ``est`` in place, pooled cells included."""
    for name in MODEL_FIELDS:
        getattr(est, name)[columns] = getattr(part, name)
    for name in MATRIX_FIELDS:
        getattr(est, name)[:, columns] = getattr(part, name)
    for name in CELL_FIELDS:
        getattr(est, name)[...] = getattr(part, name)
