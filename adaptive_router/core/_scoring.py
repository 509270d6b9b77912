"""The score and the exploration policies: NumPy over the whole catalogue, no loop per model.

    score(m) = w_latency * (1 - norm(latency_est)) + w_cost * (1 - norm(cost_est))
             + w_quality * value_est + exploration

``norm`` maps a value against fixed reference points, never the min and max of whichever models
are present: a model that is worse on every term can then never change the winner. Latency is
read on a log scale between two points (``routing.latency_scale_s``). Cost is linear in dollars
by default (``LinearScale``: ``routing.cost_reference_usd`` counts the whole cost weight), so the
score trades quality against money at one fixed rate, a unit of quality (0 to 1) for
``w_quality * reference / w_cost`` dollars, whatever the models cost. That is what makes routing per cell pay:
choosing in each cell the model with the best ``quality - rate * cost`` reaches, at its total
cost, at least the quality of any fixed mix of models at that cost (the mix is one of the
choices it weighed). On a log scale (``routing.cost_norm: log``, between
``routing.cost_scale_usd``) a fixed ratio of prices weighs the same at any price, which favours
the cheap end over the money actually spent.

The functions here take arrays and floats and write into caller-owned buffers; they do no I/O
and know nothing of settings or HTTP.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from .._settings import DEFAULT_COST_REFERENCE_USD
from ._sums import Estimates

__all__ = [
    "DEFAULT_SCALES",
    "POLICIES",
    "Choice",
    "CostScale",
    "Greedy",
    "LinearScale",
    "LogScale",
    "Policy",
    "Softmax",
    "Thompson",
    "Ucb",
    "cost_scale",
    "make_policy",
    "normal_quantile",
    "recheck_bonus",
    "scale_from_record",
    "scale_record",
    "score_sd",
]

FloatArray = npt.NDArray[np.float64]
Weights3 = tuple[float, float, float]


class LogScale:
    """Fixed reference points: ``low`` maps to 0, ``high`` to 1, log-linear between, clipped.

    ``norm(x) = (log x - origin) * inv_range``, clipped to [0, 1]."""

    __slots__ = ("high", "inv_range", "log_high", "log_low", "low")
    linear = False

    def __init__(self, low: float, high: float) -> None:
        if not 0 < low < high:
            raise ValueError(f"need 0 < low < high, got {low}, {high}")
        self.low, self.high = low, high
        self.log_low, self.log_high = math.log(low), math.log(high)
        self.inv_range = 1.0 / (self.log_high - self.log_low)

    def __repr__(self) -> str:
        return f"LogScale({self.low!r}, {self.high!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LogScale) and (self.low, self.high) == (other.low, other.high)

    def __hash__(self) -> int:
        return hash((LogScale, self.low, self.high))

    @property
    def origin(self) -> float:
        return self.log_low

    def norm(self, x: float) -> float:
        """Where ``x`` falls between the reference points, in [0, 1]."""
        logx = math.log(x) if x > 0 else -math.inf
        return min(max((logx - self.log_low) * self.inv_range, 0.0), 1.0)

    def norm_array(self, x: FloatArray) -> FloatArray:
        """``norm`` of every element."""
        out: FloatArray = np.clip((np.log(np.maximum(x, 1e-300)) - self.log_low) * self.inv_range, 0.0, 1.0)
        return out


class LinearScale:
    """Dollars, linear: free maps to 0 and ``reference`` to 1, a dearer request past 1 (no clip,
    so the rate of quality per dollar holds at any price). ``norm(x) = x * inv_range``."""

    __slots__ = ("inv_range", "reference")
    linear = True
    origin = 0.0

    def __init__(self, reference: float) -> None:
        if not (reference > 0 and math.isfinite(reference)):
            raise ValueError(f"need a finite reference > 0, got {reference}")
        self.reference = reference
        self.inv_range = 1.0 / reference

    def __repr__(self) -> str:
        return f"LinearScale({self.reference!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LinearScale) and self.reference == other.reference

    def __hash__(self) -> int:
        return hash((LinearScale, self.reference))

    def norm(self, x: float) -> float:
        """``x`` in units of the reference (0 for a free or negative amount)."""
        return max(x, 0.0) * self.inv_range

    def norm_array(self, x: FloatArray) -> FloatArray:
        """``norm`` of every element."""
        out: FloatArray = np.maximum(x, 0.0) * self.inv_range
        return out


CostScale = LogScale | LinearScale


# The default scales (settings routing.latency_scale_s and cost_reference_usd), for code that
# reads terms without a router at hand (replay of old logs, side calls).
DEFAULT_SCALES: tuple[LogScale, CostScale] = (LogScale(0.01, 120.0), LinearScale(DEFAULT_COST_REFERENCE_USD))


def scale_record(scale: CostScale) -> dict[str, object]:
    """The cost scale as a traffic-log field: a line's ``cost_term`` is read on it."""
    if isinstance(scale, LinearScale):
        return {"norm": "linear", "reference_usd": scale.reference}
    return {"norm": "log", "scale_usd": [scale.low, scale.high]}


def scale_from_record(record: object) -> CostScale:
    """:func:`scale_record` read back (a ``ValueError`` for anything else)."""
    if not isinstance(record, dict):
        raise ValueError(f"a cost scale is an object, not {record!r}")
    if record.get("norm") == "linear":
        return LinearScale(float(record["reference_usd"]))
    low, high = record["scale_usd"]
    return cost_scale(str(record.get("norm")), DEFAULT_COST_REFERENCE_USD, (float(low), float(high)))


def cost_scale(norm: str, reference_usd: float, bounds_usd: tuple[float, float]) -> CostScale:
    """The cost term's scale from settings: ``linear`` against ``reference_usd`` (a request's
    cost that counts the whole cost weight) or ``log`` between ``bounds_usd``."""
    if norm == "linear":
        return LinearScale(reference_usd)
    if norm == "log":
        return LogScale(*bounds_usd)
    raise ValueError(f"cost norm must be 'linear' or 'log', not {norm!r}")


def normal_quantile(q: float) -> float:
    """The standard normal quantile (Acklam's rational approximation, |error| < 1.2e-9)."""
    if not 0.0 < q < 1.0:
        raise ValueError("q must be in (0, 1)")
    a = (
        -39.69683028665376,
        220.9460984245205,
        -275.9285104469687,
        138.357751867269,
        -30.66479806614716,
        2.506628277459239,
    )
    b = (-54.47609879822406, 161.5858368580409, -155.6989798598866, 66.80131188771972, -13.28068155288572)
    c = (
        -0.007784894002430293,
        -0.3223964580411365,
        -2.400758277161838,
        -2.549732539343734,
        4.374664141464968,
        2.938163982698783,
    )
    d = (0.007784695709041462, 0.3224671290700398, 2.445134137142996, 3.754408661907416)
    if q < 0.02425:
        r = math.sqrt(-2 * math.log(q))
        return (((((c[0] * r + c[1]) * r + c[2]) * r + c[3]) * r + c[4]) * r + c[5]) / (
            (((d[0] * r + d[1]) * r + d[2]) * r + d[3]) * r + 1
        )
    if q > 1 - 0.02425:
        return -normal_quantile(1 - q)
    r = q - 0.5
    s = r * r
    return (
        (((((a[0] * s + a[1]) * s + a[2]) * s + a[3]) * s + a[4]) * s + a[5])
        * r
        / (((((b[0] * s + b[1]) * s + b[2]) * s + b[3]) * s + b[4]) * s + 1)
    )


@dataclass(slots=True)
class Choice:
    """What a policy picked: the row, the probability it had, and the exploration term it added."""

    index: int
    propensity: float | None
    bonus: FloatArray | None


class Policy(Protocol):
    """Picks one row from ``score`` (ineligible rows hold ``-inf``) given what was learned."""

    name: str

    def choose(
        self, score: FloatArray, est: Estimates, task: int, weights: Weights3, rng: np.random.Generator
    ) -> Choice: ...


class Greedy:
    """No exploration: the best score wins, with probability 1."""

    name = "greedy"

    def choose(
        self, score: FloatArray, est: Estimates, task: int, weights: Weights3, rng: np.random.Generator
    ) -> Choice:
        return Choice(int(score.argmax()), 1.0, None)


def score_sd(
    est: Estimates,
    task: int,
    weights: Weights3,
    latency_inv_range: float,
    out: FloatArray | None = None,
    scratch: FloatArray | None = None,
    judged: bool = False,
) -> FloatArray:
    """The standard deviation of each model's score that more evidence could still remove
    (written into ``out`` when given; ``scratch`` is a second buffer of the same shape).

    Latency term: ``w_latency / log-range`` times the spread of the mean log-latency; quality
    term: ``w_quality`` times the spread of the mean quality, as far as the cell's answers get a
    score (zero when no feedback arrives; in full when ``judged``: exploring by shadow judges
    every exploratory pick).
    """
    slope = weights[0] * latency_inv_range
    var: FloatArray = np.multiply(est.latency_var, slope * slope, out=out)
    quality_weight = weights[2] * weights[2] * (1.0 if judged else float(est.feedback_rate[task]))
    if quality_weight != 0.0:  # no feedback in this cell (or no quality weight): it would add zeros
        var += np.multiply(est.quality_var[task], quality_weight, out=scratch)
    return np.sqrt(var, out=var)


def recheck_bonus(
    est: Estimates,
    weights: Weights3,
    latency_inv_range: float,
    patience: float,
    out: FloatArray | None = None,
) -> FloatArray:
    """What a displaced model may win back, in score units: its displacement (how far its recent
    latency sits above its long-run level, log units) times the latency slope, in full once
    ``patience`` latency observations went to other models since it was last measured, in
    proportion before. A model that slowed down is so tried again after about ``patience``
    requests elsewhere; if it recovered, it wins its traffic back. In a world that does not
    change, no model is displaced and this adds nothing.
    """
    stale = np.subtract(est.observations[0], est.seen_at, out=out)  # -inf if never measured: no bonus
    np.maximum(stale, 0.0, out=stale)  # what np.clip does, without its Python wrapper
    np.minimum(stale, patience, out=stale)
    stale *= (weights[0] * latency_inv_range) / patience
    stale *= est.displacement
    bonus: FloatArray = stale
    return bonus


class _Scratch:
    """A policy's buffers, sized to the catalogue at the first decision: no allocation after."""

    __slots__ = ("bonus", "recheck", "total")

    def __init__(self, n: int) -> None:
        self.bonus, self.recheck, self.total = np.empty(n), np.empty(n), np.empty(n)

    @staticmethod
    def of(scratch: _Scratch | None, n: int) -> _Scratch:
        return scratch if scratch is not None and scratch.bonus.shape[0] == n else _Scratch(n)


def _add_recheck(
    bonus: FloatArray, est: Estimates, weights: Weights3, inv_range: float, patience: float, buf: _Scratch
) -> None:
    """``bonus += recheck_bonus(...)``; skipped when no model is displaced (it would add zeros)."""
    if np.count_nonzero(est.displacement):
        bonus += recheck_bonus(est, weights, inv_range, patience, out=buf.recheck)


class Ucb:
    """Adds ``c * sqrt(ln(1 + N)) * sd``: the score's learnable spread (``score_sd``), inflated
    as the cell's total evidence ``N`` grows, plus ``recheck_bonus`` for displaced models.
    Deterministic given the state, so the chosen model's propensity is 1.
    """

    name = "ucb"

    def __init__(self, c: float, latency_inv_range: float, patience: float = 100.0) -> None:
        self.c = c
        self.latency_inv_range = latency_inv_range
        self.patience = patience
        self.judged = False  # set by the router: exploratory picks are judged beside the answer
        self._scratch: _Scratch | None = None

    def choose(
        self, score: FloatArray, est: Estimates, task: int, weights: Weights3, rng: np.random.Generator
    ) -> Choice:
        """The returned ``bonus`` is the policy's own buffer: valid until its next decision."""
        buf = self._scratch = _Scratch.of(self._scratch, score.shape[0])
        bonus = score_sd(est, task, weights, self.latency_inv_range, buf.bonus, buf.total, self.judged)
        bonus *= self.c * math.sqrt(math.log1p(float(est.task_evidence[task])))
        _add_recheck(bonus, est, weights, self.latency_inv_range, self.patience, buf)
        return Choice(int(np.add(score, bonus, out=buf.total).argmax()), 1.0, bonus)


class Thompson:
    """Samples each model's score from a Gaussian around its estimate with spread ``score_sd``
    (plus ``recheck_bonus`` for displaced models).

    The chosen model's probability has no closed form, so none is logged (use ``softmax`` when
    the traffic log must support off-policy replay).
    """

    name = "thompson"

    def __init__(self, latency_inv_range: float, patience: float = 100.0, scale: float = 1.0) -> None:
        self.latency_inv_range = latency_inv_range
        self.patience = patience
        self.scale = scale
        self.judged = False  # as Ucb's
        self._scratch: _Scratch | None = None

    def choose(
        self, score: FloatArray, est: Estimates, task: int, weights: Weights3, rng: np.random.Generator
    ) -> Choice:
        """The returned ``bonus`` is the policy's own buffer: valid until its next decision."""
        buf = self._scratch = _Scratch.of(self._scratch, score.shape[0])
        bonus = score_sd(est, task, weights, self.latency_inv_range, buf.bonus, buf.total, self.judged)
        bonus *= rng.standard_normal(score.shape[0], out=buf.total)
        bonus *= self.scale
        _add_recheck(bonus, est, weights, self.latency_inv_range, self.patience, buf)
        return Choice(int(np.add(score, bonus, out=buf.total).argmax()), None, bonus)


class Softmax:
    """Boltzmann over the eligible scores at ``temperature`` (score units); exact propensities."""

    name = "softmax"

    def __init__(self, temperature: float) -> None:
        self.temperature = temperature

    def choose(
        self, score: FloatArray, est: Estimates, task: int, weights: Weights3, rng: np.random.Generator
    ) -> Choice:
        p = self.probabilities(score)
        cdf = np.cumsum(p)
        index = min(int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right")), p.shape[0] - 1)
        while p[index] == 0.0:  # float edge: never land on an ineligible row
            index -= 1
        return Choice(index, float(p[index]), None)

    def probabilities(self, score: FloatArray) -> FloatArray:
        """Probabilities over all rows; ineligible rows (score -inf) get exactly 0."""
        p = score - score.max()
        p /= self.temperature
        np.exp(p, out=p)
        p /= p.sum()
        probabilities: FloatArray = p
        return probabilities


POLICIES = ("ucb", "thompson", "softmax", "greedy")


def make_policy(
    name: str,
    ucb_c: float = 1.0,
    temperature: float = 0.02,
    latency_inv_range: float = 1.0 / math.log(12000.0),
    recheck_after: float = 100.0,
) -> Policy:
    """``latency_inv_range`` is ``1 / ln(high / low)`` of the latency scale (the latency term's slope);
    ``recheck_after``: requests elsewhere after which a displaced model is tried again."""
    if name == "ucb":
        return Ucb(ucb_c, latency_inv_range, recheck_after)
    if name == "thompson":
        return Thompson(latency_inv_range, recheck_after)
    if name == "softmax":
        return Softmax(temperature)
    if name == "greedy":
        return Greedy()
    raise ValueError(f"unknown exploration policy {name!r}; choose one of {', '.join(POLICIES)}")
