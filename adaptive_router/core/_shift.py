"""Persistent latency shifts that no single answer shows: a two-sided CUSUM per model.

One answer far outside a model's fit is a *surprise* (``Learner._observe_latency``). A shift
smaller than that limit, or hidden in noise (a loaded machine, a jittery network), shows only
as several answers off in the same direction: each answer's standardised log residual ``z``
feeds Page's cumulative sums

    hi = max(0, hi + z - drift)      lo = max(0, lo - z - drift)

and either passing ``threshold`` is a shift. The answers since that sum last stood at zero are
the new regime: the learner keeps them in full and forgets the old evidence down to about one
answer's worth, so its estimate moves to where the model is now instead of creeping there.

State per model is two floats and the last few answers (``_RUN_MAX``): O(1) per answer. It is
local to a replica (the forgetting it triggers travels as a surprise event, like any other).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

__all__ = ["Answer", "ShiftDetector"]

_RUN_MAX = 16  # answers kept per model: a run longer than this keeps its latest ones

# One answer's points (x in hundreds of tokens, latency in s), each of ``weight``, at ``t``.
Answer = tuple[float, tuple[tuple[float, float], ...], float]


@dataclass(slots=True)
class _Run:
    hi: float = 0.0
    lo: float = 0.0
    n_hi: int = 0  # answers since ``hi`` last stood at zero
    n_lo: int = 0
    recent: deque[Answer] = field(default_factory=lambda: deque(maxlen=_RUN_MAX))


class ShiftDetector:
    """``observe`` each answer's standardised residual before it joins the fit; it returns the
    answers of the new regime when a shift is established (the current one not included)."""

    def __init__(self, drift: float = 0.5, threshold: float = 5.0) -> None:
        if drift < 0 or threshold <= 0:
            raise ValueError("need drift >= 0 and threshold > 0")
        self.drift = drift
        self.threshold = threshold
        self._runs: dict[int, _Run] = {}

    def observe(self, model: int, z: float) -> list[Answer] | None:
        run = self._runs.get(model)
        if run is None:
            run = self._runs[model] = _Run()
        run.hi = max(0.0, run.hi + z - self.drift)
        run.lo = max(0.0, run.lo - z - self.drift)
        run.n_hi = run.n_hi + 1 if run.hi > 0.0 else 0
        run.n_lo = run.n_lo + 1 if run.lo > 0.0 else 0
        if run.hi <= self.threshold and run.lo <= self.threshold:
            return None
        n = run.n_hi if run.hi > self.threshold else run.n_lo
        recent = list(run.recent)[-(n - 1) :] if n > 1 else []
        self.reset(model)
        return recent

    def remember(self, model: int, answer: Answer) -> None:
        """The answer just added to the fit: kept while a run is under way (it may open a new
        regime), dropped with the others once both sums are back at zero."""
        run = self._runs.get(model)
        if run is None:
            return
        if run.n_hi or run.n_lo:
            run.recent.append(answer)
        else:
            run.recent.clear()

    def reset(self, model: int | None = None) -> None:
        """Forget the runs of ``model`` (its evidence was just forgotten), or of every model."""
        if model is None:
            self._runs.clear()
        else:
            self._runs.pop(model, None)
