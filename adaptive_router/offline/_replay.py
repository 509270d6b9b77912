"""Offline replay: off-policy estimates over traffic logs, and the router run through outcome tables.

Off-policy, over a traffic log (see :mod:`adaptive_router.trafficlog` for the line schema):

    data = read_log("logs/traffic.jsonl")                  # every rotated file, feedback joined
    result = evaluate(data, TargetPolicy("greedy", mode="cost"))
    result.ips, result.snips, result.dr                    # each an Interval(value, low, high, se)

The target policy's probability of each logged candidate is recomputed from the logged scores
(under the target's weights when it names a mode or weights): exact for a softmax target, a
one-hot pick for greedy and UCB targets (UCB adds the exploration term the log carries, so on a
log written by a non-UCB policy it is greedy). Probabilities range over the logged candidates,
the chain of at most ``routing.top_k`` models: exact when top_k covers every eligible model,
otherwise the little probability a softmax gives to the rest is spread over the chain. Records
without a propensity (Thompson sampling) or answered from the cache are skipped and counted.

Estimators: inverse propensity scoring (IPS), self-normalised IPS (SNIPS) and doubly robust
(DR, whose direct model is the mean reward per (learner cell, model) in the same log). Intervals use
the normal approximation (``value ± z·se``; SNIPS's standard error by the delta method).

Running the router itself through outcome tables lives in :mod:`adaptive_router.outcomes`; its
names are re-exported here, so ``from adaptive_router.replay import replay_outcomes`` works.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .._errors import ReplayError
from .._settings import RoutingSettings
from ..core._scoring import DEFAULT_SCALES, CostScale, LogScale, scale_from_record

__all__ = [
    "Interval",
    "LogData",
    "PolicyEstimate",
    "RewardSpec",
    "TargetPolicy",
    "evaluate",
    "evaluate_many",
    "log_files",
    "logged_value",
    "read_log",
    "target_distribution",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]
Weights3 = tuple[float, float, float]
TARGETS = ("greedy", "softmax", "ucb")


# --- reading traffic logs -----------------------------------------------------------------


@dataclass
class LogData:
    """Decision lines in time order, the latest feedback and judge score per request id."""

    decisions: list[dict[str, Any]]
    feedback: dict[str, float]
    files: list[Path]
    malformed: int = 0
    judged: dict[str, float] = field(default_factory=dict)  # the judge's (evaluation lines)


def log_files(path: str | Path) -> list[Path]:
    """``path`` and its rotated backups, oldest first (``path.N`` ... ``path.1``, ``path``)."""
    base = Path(path)
    backups = []
    for candidate in base.parent.glob(base.name + ".*"):
        suffix = candidate.name[len(base.name) + 1 :]
        if suffix.isdigit():
            backups.append((int(suffix), candidate))
    files = [p for _, p in sorted(backups, reverse=True)]
    if base.exists():
        files.append(base)
    if not files:
        raise ReplayError(f"{base}: no such traffic log")
    return files


def read_log(path: str | Path, *, strict: bool = True) -> LogData:
    """Read every file of a traffic log. ``strict``: a malformed line raises; else it is counted."""
    data = LogData([], {}, log_files(path))
    for file in data.files:
        try:
            lines = file.read_text(encoding="utf-8").split("\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise ReplayError(f"{file}: cannot read: {exc}") from exc
        for number, line in enumerate(lines, start=1):
            if line.strip() and not _add_line(data, line) and strict:
                raise ReplayError(f"{file}, line {number}: not a traffic-log line (v1 JSON)")
    return data


def _add_line(data: LogData, line: str) -> bool:
    try:
        record = json.loads(line)
    except ValueError:
        data.malformed += 1
        return False
    if not isinstance(record, dict) or record.get("v") != 1:
        data.malformed += 1
        return False
    if record.get("type") == "feedback":
        score = record.get("score")
        if isinstance(record.get("request_id"), str) and isinstance(score, int | float):
            data.feedback[record["request_id"]] = float(score)
            return True
    elif record.get("type") == "decision" and isinstance(record.get("candidates"), list):
        data.decisions.append(record)
        return True
    elif record.get("type") in ("evaluation", "preference"):  # evaluators' lines
        if record.get("evaluator") == "judge" and isinstance(record.get("score"), int | float):
            data.judged[str(record.get("request_id"))] = float(record["score"])
        return True
    data.malformed += 1
    return False


# --- rewards and targets ------------------------------------------------------------------


@dataclass(frozen=True)
class RewardSpec:
    """Reward of one request: the feedback score when present (and ``use_feedback``), else the
    judge's score when it judged the answer (and ``use_judge``), else 1 if a model answered and
    0 if none did; less ``cost_per_usd`` per dollar and ``latency_per_s``
    per second the client waited (attempts summed; estimates stand in for unlogged numbers)."""

    use_feedback: bool = True
    use_judge: bool = True
    cost_per_usd: float = 0.0
    latency_per_s: float = 0.0

    def describe(self) -> str:
        """What the reward is, in words: printed beside every estimate."""
        judge = ", else the judge's score in [0, 1] where it judged the answer" if self.use_judge else ""
        base = (
            f"the feedback score in [0, 1] where a request got one{judge}, else 1 if a model answered "
            "and 0 if none"
            if self.use_feedback
            else "1 if a model answered, 0 if none did"
        )
        penalties = [
            f"{value:g} per {unit}"
            for value, unit in ((self.cost_per_usd, "USD spent"), (self.latency_per_s, "second waited"))
            if value
        ]
        return base + (f", less {' and '.join(penalties)}" if penalties else "")

    def bounds(self) -> tuple[float, float] | None:
        """The range every reward lies in, when it is known without the log ([0, 1] without
        penalties); None: use the range of the rewards observed."""
        return None if self.cost_per_usd or self.latency_per_s else (0.0, 1.0)

    def __call__(self, record: Mapping[str, Any], feedback: Mapping[str, float]) -> float:
        score = feedback.get(record["request_id"]) if self.use_feedback else None
        value = score if score is not None else float(record.get("answered_by") is not None)
        if self.cost_per_usd or self.latency_per_s:
            cost, latency = _spent(record)
            value -= self.cost_per_usd * cost + self.latency_per_s * latency
        return value


def _spent(record: Mapping[str, Any]) -> tuple[float, float]:
    attempts = record.get("attempts") or []
    costs = [a["cost_usd"] for a in attempts if a.get("cost_usd") is not None]
    waits = [a["latency_ms"] / 1000 for a in attempts if a.get("latency_ms") is not None]
    head = record["candidates"][0]
    cost = sum(costs) if costs else float(head.get("cost_usd") or 0.0)
    latency = sum(waits) if waits else float(head.get("latency_s") or 0.0)
    return cost, latency


@dataclass(frozen=True)
class TargetPolicy:
    """The policy to evaluate: ``greedy``, ``softmax`` (at ``temperature``) or ``ucb``, under a
    named ``mode`` or explicit ``weights`` (latency, cost, quality), else each record's own."""

    policy: str = "greedy"
    mode: str | None = None
    weights: Weights3 | None = None
    temperature: float = 0.02

    def __post_init__(self) -> None:
        if self.policy not in TARGETS:
            raise ValueError(f"target policy must be one of {', '.join(TARGETS)}, not {self.policy!r}")
        if not self.temperature > 0:
            raise ValueError("temperature must be > 0")

    @property
    def label(self) -> str:
        name = f"softmax(T={self.temperature:g})" if self.policy == "softmax" else self.policy
        if self.weights is not None:
            return f"{name} @ weights {','.join(f'{w:g}' for w in self.weights)}"
        return f"{name} @ {self.mode or 'logged weights'}"


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float
    se: float

    @classmethod
    def normal(cls, value: float, se: float, z: float) -> Interval:
        return cls(value, value - z * se, value + z * se, se)


@dataclass
class PolicyEstimate:
    """Off-policy estimates of one target's mean reward on a log."""

    target: str
    ips: Interval
    snips: Interval
    dr: Interval
    n: int
    ess: float  # effective sample size of the importance weights, (sum w)^2 / sum w^2
    agreement: float  # mean target probability of the logged choice
    skipped: dict[str, int] = field(default_factory=dict)
    reward: str = ""  # what the reward is (RewardSpec.describe)
    reward_range: tuple[float, float] = (0.0, 1.0)
    warnings: list[str] = field(default_factory=list)

    @property
    def ips_in_range(self) -> bool:
        """An IPS mean outside the reward range cannot be a mean reward: its weights are off."""
        low, high = self.reward_range
        return low - 1e-9 <= self.ips.value <= high + 1e-9

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


MIN_ESS = 30.0  # below this many effective samples an estimate is a guess
MIN_ESS_SHARE = 0.05  # or below this share of the records


def _honesty(estimate: PolicyEstimate) -> PolicyEstimate:
    """Warn of a small effective sample size and of an IPS figure outside the reward range."""
    if estimate.ess < max(MIN_ESS, MIN_ESS_SHARE * estimate.n):
        estimate.warnings.append(
            f"effective sample size {estimate.ess:.1f} of {estimate.n} records: the target rarely "
            "agrees with what was logged, so these estimates rest on few requests"
        )
    if not estimate.ips_in_range:
        low, high = estimate.reward_range
        estimate.warnings.append(
            f"IPS {estimate.ips.value:.4g} lies outside the reward range [{low:g}, {high:g}]: not a "
            "usable figure (propensities too small or wrong); read SNIPS or DR instead"
        )
    return estimate


# --- the log as arrays ----------------------------------------------------------------------


@dataclass
class _Logged:
    """Decision records as (n, K) arrays, K the longest candidate list; padding is masked."""

    terms: FloatArray  # (3, n, K) unweighted latency, cost and quality terms
    score: FloatArray  # (n, K) logged score less its exploration
    bonus: FloatArray  # (n, K) logged exploration term
    mask: npt.NDArray[np.bool_]
    chosen: IntArray  # (n,) position of the chosen model among the candidates
    pinned: npt.NDArray[np.bool_]
    propensity: FloatArray
    reward: FloatArray
    task: IntArray
    model: IntArray  # (n, K) model index, -1 for padding
    skipped: dict[str, int]
    names: list[str] = field(default_factory=list)  # model index -> id


def _prepare(log: LogData, reward: RewardSpec, scales: tuple[LogScale, CostScale]) -> _Logged:
    rows, skipped = [], {"cached": 0, "no_propensity": 0, "no_candidates": 0}
    for record in log.decisions:
        reason = _skip_reason(record)
        if reason:
            skipped[reason] += 1
        else:
            rows.append(record)
    n, k = len(rows), max((len(r["candidates"]) for r in rows), default=1)
    arrays = _Logged(
        np.zeros((3, n, k)),
        np.full((n, k), -np.inf),
        np.zeros((n, k)),
        np.zeros((n, k), np.bool_),
        np.zeros(n, np.intp),
        np.zeros(n, np.bool_),
        np.ones(n),
        np.zeros(n),
        np.zeros(n, np.intp),
        np.full((n, k), -1, np.intp),
        skipped,
    )
    tasks: dict[str, int] = {}
    models: dict[str, int] = {}
    scores = {**log.judged, **log.feedback} if reward.use_judge and reward.use_feedback else log.feedback
    for i, record in enumerate(rows):
        try:
            _fill_row(arrays, i, record, scales, tasks, models)
            arrays.reward[i] = reward(record, scores)
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
            raise ReplayError(f"decision {record.get('request_id')!r}: malformed record ({exc!r})") from exc
    arrays.names = list(models)
    return arrays


def _skip_reason(record: Mapping[str, Any]) -> str | None:
    if record.get("cached"):
        return "cached"
    if not record.get("candidates"):
        return "no_candidates"
    propensity = record.get("propensity")
    if not isinstance(propensity, int | float) or propensity <= 0:
        return "no_propensity"
    return None


def _fill_row(
    a: _Logged,
    i: int,
    record: Mapping[str, Any],
    scales: tuple[LogScale, CostScale],
    tasks: dict[str, int],
    models: dict[str, int],
) -> None:
    w = record["weights"]
    weights = (float(w["latency"]), float(w["cost"]), float(w["quality"]))
    names = [c["model"] for c in record["candidates"]]
    rescale = not _same_cost_scale(record, scales[1])
    for j, c in enumerate(record["candidates"]):
        a.terms[0, i, j] = _unweighted(c["latency_term"], weights[0], c["latency_s"], scales[0])
        a.bonus[i, j] = float(c.get("exploration") or 0.0)
        a.terms[2, i, j] = float(c["quality"])
        if rescale:  # logged on another cost scale: the cost term and the score read again on ours
            a.terms[1, i, j] = 1.0 - scales[1].norm(float(c["cost_usd"]))
            a.score[i, j] = sum(weights[t] * a.terms[t, i, j] for t in range(3))
        else:
            a.terms[1, i, j] = _unweighted(c["cost_term"], weights[1], c["cost_usd"], scales[1])
            a.score[i, j] = float(c["score"]) - a.bonus[i, j]
        a.mask[i, j] = True
        a.model[i, j] = models.setdefault(c["model"], len(models))
    a.chosen[i] = names.index(record["model"])
    a.pinned[i] = bool(record.get("pinned"))
    a.propensity[i] = float(record["propensity"])
    # The direct model's groups are the router's own learner cells (older lines: the task).
    profile = record["profile"]
    a.task[i] = tasks.setdefault(str(profile.get("cell", profile["task"])), len(tasks))


def _same_cost_scale(record: Mapping[str, Any], scale: CostScale) -> bool:
    """Whether ``record``'s cost terms were read on ``scale``. A line without ``cost_scale`` was
    written when the cost term was always a log: its bounds are taken to be ``scale``'s if that is
    a log scale too (as replay did before the linear scale), and never a linear scale's."""
    logged = record.get("cost_scale")
    if logged is None:
        return isinstance(scale, LogScale)
    return scale_from_record(logged) == scale


def _unweighted(term: float, weight: float, raw: float, scale: LogScale | CostScale) -> float:
    """``1 - norm(raw)``: from the weighted term when its weight allows, else from the raw value."""
    if weight > 1e-9:
        return float(term) / weight
    return 1.0 - scale.norm(float(raw))


# --- off-policy estimates -------------------------------------------------------------------


def _default_modes() -> dict[str, Weights3]:
    return {name: w.normalised() for name, w in RoutingSettings().modes.items()}


def _resolve_weights(target: TargetPolicy, modes: Mapping[str, Weights3]) -> Weights3 | None:
    if target.weights is not None:
        total = sum(target.weights)
        if total <= 0 or min(target.weights) < 0:
            raise ValueError("target weights must be >= 0 and not all zero")
        return (target.weights[0] / total, target.weights[1] / total, target.weights[2] / total)
    if target.mode is None:
        return None
    if target.mode not in modes:
        raise ValueError(f"unknown mode {target.mode!r}; known: {', '.join(modes)}")
    return modes[target.mode]


def _target_probabilities(a: _Logged, target: TargetPolicy, modes: Mapping[str, Weights3]) -> FloatArray:
    weights = _resolve_weights(target, modes)
    if weights is None:
        base = a.score.copy()
    else:
        base = weights[0] * a.terms[0] + weights[1] * a.terms[1] + weights[2] * a.terms[2]
    if target.policy == "ucb":
        base += a.bonus
    base[~a.mask] = -np.inf
    n = base.shape[0]
    if target.policy == "softmax":
        z = (base - base.max(axis=1, keepdims=True)) / target.temperature
        probs: FloatArray = np.exp(z)
        probs /= probs.sum(axis=1, keepdims=True)
    else:
        probs = np.zeros_like(base)
        probs[np.arange(n), base.argmax(axis=1)] = 1.0
    # A pinned request went where the client said: any policy would have sent it there.
    probs[a.pinned] = 0.0
    probs[np.flatnonzero(a.pinned), a.chosen[a.pinned]] = 1.0
    return probs


def _direct_model(a: _Logged) -> FloatArray:
    """Mean logged reward per (cell, model), falling back to the model's mean, then the overall."""
    chosen_model = a.model[np.arange(a.model.shape[0]), a.chosen]
    n_tasks = int(a.task.max(initial=0)) + 1
    n_models = int(a.model.max(initial=0)) + 1
    cell = a.task * n_models + chosen_model
    count = np.bincount(cell, minlength=n_tasks * n_models).reshape(n_tasks, n_models)
    total = np.bincount(cell, weights=a.reward, minlength=n_tasks * n_models).reshape(n_tasks, n_models)
    overall = float(a.reward.mean()) if a.reward.size else 0.0
    m_count, m_total = count.sum(axis=0), total.sum(axis=0)
    per_model = np.where(m_count > 0, m_total / np.maximum(m_count, 1), overall)
    table: FloatArray = np.where(count > 0, total / np.maximum(count, 1), per_model[None, :])
    return table


def evaluate(
    log: LogData,
    target: TargetPolicy,
    reward: RewardSpec | None = None,
    *,
    modes: Mapping[str, Weights3] | None = None,
    scales: tuple[LogScale, CostScale] = DEFAULT_SCALES,
    z: float = 1.96,
) -> PolicyEstimate:
    """IPS, SNIPS and DR estimates of ``target``'s mean reward on ``log``, with normal intervals.

    ``modes`` maps mode names to normalised weights (default: the built-in four); ``scales``
    are the router's latency and cost reference scales, needed only where a logged weight is 0.
    """
    return evaluate_many(log, [target], reward, modes=modes, scales=scales, z=z)[0]


def evaluate_many(
    log: LogData,
    targets: Sequence[TargetPolicy],
    reward: RewardSpec | None = None,
    *,
    modes: Mapping[str, Weights3] | None = None,
    scales: tuple[LogScale, CostScale] = DEFAULT_SCALES,
    z: float = 1.96,
) -> list[PolicyEstimate]:
    """:func:`evaluate` for several targets, reading the log into arrays once."""
    arrays = _prepare(log, reward or RewardSpec(), scales)
    if arrays.reward.size == 0:
        raise ReplayError("no decision in the log can be replayed (all cached or without a propensity)")
    modes = modes if modes is not None else _default_modes()
    dm = _direct_model(arrays)
    return [_estimate(arrays, dm, t, modes, z, reward) for t in targets]


def target_distribution(
    log: LogData,
    target: TargetPolicy,
    *,
    modes: Mapping[str, Weights3] | None = None,
    scales: tuple[LogScale, CostScale] = DEFAULT_SCALES,
) -> list[dict[str, float]]:
    """What ``target`` would have done: for each replayable decision, in log order, its
    probability of each logged candidate."""
    arrays = _prepare(log, RewardSpec(), scales)
    probs = _target_probabilities(arrays, target, modes if modes is not None else _default_modes())
    return [
        {arrays.names[m]: float(p) for m, p in zip(row_models, row_probs, strict=True) if m >= 0}
        for row_models, row_probs in zip(arrays.model.tolist(), probs.tolist(), strict=True)
    ]


def logged_value(log: LogData, reward: RewardSpec | None = None, z: float = 1.96) -> Interval:
    """The logging policy's own mean reward over the replayable records (on-policy)."""
    arrays = _prepare(log, reward or RewardSpec(), DEFAULT_SCALES)
    r = arrays.reward
    se = float(r.std(ddof=1) / math.sqrt(r.size)) if r.size > 1 else math.inf
    return Interval.normal(float(r.mean()) if r.size else math.nan, se, z)


def _estimate(
    a: _Logged,
    dm: FloatArray,
    target: TargetPolicy,
    modes: Mapping[str, Weights3],
    z: float,
    reward: RewardSpec | None = None,
) -> PolicyEstimate:
    n = a.reward.shape[0]
    rows = np.arange(n)
    probs = _target_probabilities(a, target, modes)
    w = probs[rows, a.chosen] / a.propensity
    r = a.reward
    ips_terms = w * r
    q_hat = np.where(a.model >= 0, dm[a.task[:, None], np.maximum(a.model, 0)], 0.0)
    dr_terms = (probs * q_hat).sum(axis=1) + w * (r - q_hat[rows, a.chosen])
    total_w = float(w.sum())
    snips = float(ips_terms.sum() / total_w) if total_w > 0 else math.nan
    snips_se = float(math.sqrt(float(((w * (r - snips)) ** 2).sum())) / total_w) if total_w > 0 else math.inf
    spec = reward or RewardSpec()
    bounds = spec.bounds() or ((float(r.min()), float(r.max())) if n else (0.0, 0.0))
    estimate = PolicyEstimate(
        target=target.label,
        ips=Interval.normal(float(ips_terms.mean()), _se(ips_terms), z),
        snips=Interval.normal(snips, snips_se, z),
        dr=Interval.normal(float(dr_terms.mean()), _se(dr_terms), z),
        n=n,
        ess=total_w**2 / float((w * w).sum()) if total_w > 0 else 0.0,
        agreement=float(probs[rows, a.chosen].mean()),
        skipped=dict(a.skipped),
        reward=spec.describe(),
        reward_range=bounds,
    )
    return _honesty(estimate)


def _se(x: FloatArray) -> float:
    return float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else math.inf


# Outcome-table replay is its own module; re-exported so this stays the one import for replay.
