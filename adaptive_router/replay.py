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

Over an outcome table (every model's quality and cost for each prompt):

    table = load_outcomes("outcomes.csv", source="routerbench")
    report = replay_outcomes(table, policy="ucb", mode="quality", seed=1, latency=load_latency(csv))
    report.router.quality, report.router.cost_usd, report.regret_vs_oracle
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .catalogue import Catalogue, Model
from .errors import RouterError
from .profile import estimate_tokens
from .router import Outcome, Router, RouteRequest
from .scoring import LogScale
from .settings import RoutingSettings, Settings
from .simulate import SimClock

__all__ = [
    "CurvePoint",
    "Interval",
    "LatencyGroups",
    "LogData",
    "OutcomeReplay",
    "OutcomeTable",
    "PolicyEstimate",
    "ReplayError",
    "RewardSpec",
    "TargetPolicy",
    "cost_quality_curve",
    "curve_weights",
    "evaluate",
    "evaluate_many",
    "load_latency",
    "load_outcomes",
    "log_files",
    "logged_value",
    "outcome_catalogue",
    "read_log",
    "replay_outcomes",
    "table_sources",
    "target_distribution",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]
Weights3 = tuple[float, float, float]
Progress = Callable[[int, int], None]
TARGETS = ("greedy", "softmax", "ucb")
OUTCOME_COLUMNS = ("source", "prompt_id", "model", "quality", "cost_usd")


class ReplayError(RouterError):
    """Replay input that cannot be used: a missing file, a malformed line, a missing column."""


# --- reading traffic logs -----------------------------------------------------------------


@dataclass
class LogData:
    """Decision lines in time order, and the latest feedback score per request id."""

    decisions: list[dict[str, Any]]
    feedback: dict[str, float]
    files: list[Path]
    malformed: int = 0


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
    data.malformed += 1
    return False


# --- rewards and targets ------------------------------------------------------------------


@dataclass(frozen=True)
class RewardSpec:
    """Reward of one request: the feedback score when present (and ``use_feedback``), else 1 if
    a model answered and 0 if none did; less ``cost_per_usd`` per dollar and ``latency_per_s``
    per second the client waited (attempts summed; estimates stand in for unlogged numbers)."""

    use_feedback: bool = True
    cost_per_usd: float = 0.0
    latency_per_s: float = 0.0

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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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


def _prepare(log: LogData, reward: RewardSpec, scales: tuple[LogScale, LogScale]) -> _Logged:
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
    for i, record in enumerate(rows):
        try:
            _fill_row(arrays, i, record, scales, tasks, models)
            arrays.reward[i] = reward(record, log.feedback)
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
    scales: tuple[LogScale, LogScale],
    tasks: dict[str, int],
    models: dict[str, int],
) -> None:
    w = record["weights"]
    weights = (float(w["latency"]), float(w["cost"]), float(w["quality"]))
    names = [c["model"] for c in record["candidates"]]
    for j, c in enumerate(record["candidates"]):
        a.terms[0, i, j] = _unweighted(c["latency_term"], weights[0], c["latency_s"], scales[0])
        a.terms[1, i, j] = _unweighted(c["cost_term"], weights[1], c["cost_usd"], scales[1])
        a.terms[2, i, j] = float(c["quality"])
        a.bonus[i, j] = float(c.get("exploration") or 0.0)
        a.score[i, j] = float(c["score"]) - a.bonus[i, j]
        a.mask[i, j] = True
        a.model[i, j] = models.setdefault(c["model"], len(models))
    a.chosen[i] = names.index(record["model"])
    a.pinned[i] = bool(record.get("pinned"))
    a.propensity[i] = float(record["propensity"])
    # The direct model's groups are the router's own learner cells (older lines: the task).
    profile = record["profile"]
    a.task[i] = tasks.setdefault(str(profile.get("cell", profile["task"])), len(tasks))


def _unweighted(term: float, weight: float, raw: float, scale: LogScale) -> float:
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
    scales: tuple[LogScale, LogScale] = (LogScale(0.05, 120.0), LogScale(1e-7, 1.0)),
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
    scales: tuple[LogScale, LogScale] = (LogScale(0.05, 120.0), LogScale(1e-7, 1.0)),
    z: float = 1.96,
) -> list[PolicyEstimate]:
    """:func:`evaluate` for several targets, reading the log into arrays once."""
    arrays = _prepare(log, reward or RewardSpec(), scales)
    if arrays.reward.size == 0:
        raise ReplayError("no decision in the log can be replayed (all cached or without a propensity)")
    modes = modes if modes is not None else _default_modes()
    dm = _direct_model(arrays)
    return [_estimate(arrays, dm, t, modes, z) for t in targets]


def target_distribution(
    log: LogData,
    target: TargetPolicy,
    *,
    modes: Mapping[str, Weights3] | None = None,
    scales: tuple[LogScale, LogScale] = (LogScale(0.05, 120.0), LogScale(1e-7, 1.0)),
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
    arrays = _prepare(log, reward or RewardSpec(), (LogScale(0.05, 120.0), LogScale(1e-7, 1.0)))
    r = arrays.reward
    se = float(r.std(ddof=1) / math.sqrt(r.size)) if r.size > 1 else math.inf
    return Interval.normal(float(r.mean()) if r.size else math.nan, se, z)


def _estimate(
    a: _Logged, dm: FloatArray, target: TargetPolicy, modes: Mapping[str, Weights3], z: float
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
    return PolicyEstimate(
        target=target.label,
        ips=Interval.normal(float(ips_terms.mean()), _se(ips_terms), z),
        snips=Interval.normal(snips, snips_se, z),
        dr=Interval.normal(float(dr_terms.mean()), _se(dr_terms), z),
        n=n,
        ess=total_w**2 / float((w * w).sum()) if total_w > 0 else 0.0,
        agreement=float(probs[rows, a.chosen].mean()),
        skipped=dict(a.skipped),
    )


def _se(x: FloatArray) -> float:
    return float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else math.inf


# --- outcome tables -------------------------------------------------------------------------


@dataclass
class OutcomeTable:
    """Every model's outcome on every prompt: (prompts, models) arrays, rows in file order."""

    source: str
    models: tuple[str, ...]
    prompt_ids: list[str]
    datasets: list[str]
    texts: list[str]
    quality: FloatArray
    cost: FloatArray  # USD per request
    output_tokens: FloatArray
    dropped: int = 0  # prompts left out: a model's row, its quality or the prompt text missing

    def __len__(self) -> int:
        return len(self.prompt_ids)


def _float(value: str, where: str) -> float:
    if value == "":
        return math.nan
    try:
        return float(value)
    except ValueError:
        raise ReplayError(f"{where}: not a number: {value!r}") from None


def _read_rows(path: Path, source: str | None, split: str | None) -> tuple[str, dict[str, dict[str, Any]]]:
    """Rows of one source as {prompt_id: {"dataset": ..., model: (quality, cost, chars)}}."""
    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise ReplayError(f"{path}: cannot read: {exc.strerror}") from exc
    with handle:
        reader = csv.DictReader(handle)
        missing = [c for c in OUTCOME_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ReplayError(
                f"{path}: missing column(s) {', '.join(missing)} (need {', '.join(OUTCOME_COLUMNS)})"
            )
        prompts: dict[str, dict[str, Any]] = {}
        for line, row in enumerate(reader, start=2):
            source = source or row["source"]
            if row["source"] != source or (split is not None and row.get("split") != split):
                continue
            where = f"{path}, line {line}"
            cell = prompts.setdefault(row["prompt_id"], {"dataset": row.get("dataset") or ""})
            cell[row["model"]] = (
                _float(row["quality"], where),
                _float(row["cost_usd"], where),
                _float(row.get("output_chars") or "", where),
            )
    if source is None or not prompts:
        raise ReplayError(f"{path}: no outcome rows" + (f" for source {source!r}" if source else ""))
    return source, prompts


def table_sources(path: str | Path) -> list[str]:
    """The sources in an outcome table, in order of first appearance."""
    seen: dict[str, None] = {}
    try:
        with Path(path).open(newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                seen.setdefault(row.get("source") or "", None)
    except OSError as exc:
        raise ReplayError(f"{path}: cannot read: {exc.strerror}") from exc
    return list(seen)


def _read_prompts(path: Path, source: str, wanted: set[str]) -> dict[str, str]:
    texts: dict[str, str] = {}
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except OSError as exc:
        raise ReplayError(f"{path}: cannot read: {exc.strerror}") from exc
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            if item["source"] == source and item["prompt_id"] in wanted:
                texts[item["prompt_id"]] = str(item["prompt"])
        except (ValueError, KeyError, TypeError):
            raise ReplayError(f"{path}, line {number}: expected {{source, prompt_id, prompt}} JSON") from None
    return texts


def load_outcomes(
    table: str | Path,
    prompts: str | Path | None = None,
    *,
    source: str | None = None,
    split: str | None = None,
) -> OutcomeTable:
    """Load one ``source`` (default: the first in the file) of an outcome table with its prompts.

    ``prompts`` defaults to ``prompts.jsonl`` beside the table. Prompts where some model has
    no row or no quality, or whose text is missing, are left out and counted in ``dropped``.
    """
    path = Path(table)
    source, rows = _read_rows(path, source, split)
    prompts_path = Path(prompts) if prompts is not None else path.with_name("prompts.jsonl")
    texts = _read_prompts(prompts_path, source, set(rows))
    models = tuple(sorted({m for cell in rows.values() for m in cell if m != "dataset"}))
    kept = [
        pid
        for pid, cell in rows.items()
        if pid in texts and all(m in cell and not math.isnan(cell[m][0]) for m in models)
    ]
    values = np.array([[rows[pid][m] for m in models] for pid in kept], dtype=np.float64).reshape(
        len(kept), len(models), 3
    )
    cost = np.nan_to_num(values[:, :, 1], nan=0.0)
    chars = np.nan_to_num(values[:, :, 2], nan=4.0 * 300)
    return OutcomeTable(
        source=source,
        models=models,
        prompt_ids=kept,
        datasets=[rows[pid]["dataset"] for pid in kept],
        texts=[texts[pid] for pid in kept],
        quality=values[:, :, 0].copy(),
        cost=cost,
        output_tokens=np.maximum(np.ceil(chars / 4.0), 1.0),
        dropped=len(rows) - len(kept),
    )


def outcome_catalogue(table: OutcomeTable) -> Catalogue:
    """The table's models priced from their mean cost per token; equal, neutral priors."""
    prompt_tokens = np.array([estimate_tokens(len(t)) for t in table.texts], dtype=np.float64)
    tokens = prompt_tokens[:, None] + table.output_tokens
    price = table.cost.sum(axis=0) / np.maximum(tokens.sum(axis=0), 1.0)
    models = [
        Model(
            id=model,
            price_prompt=float(price[j]),
            price_completion=float(price[j]),
            context_length=10_000_000,
            prior_sources={"price": f"mean cost per token in the {table.source} table"},
        )
        for j, model in enumerate(table.models)
    ]
    return Catalogue(models, source=f"outcomes:{table.source}")


# --- measured latency -----------------------------------------------------------------------

_LATENCY_COLUMNS = ("provider", "llama2_size", "error_code", "ttft_s", "inter_token_latency_s")


@dataclass
class LatencyGroups:
    """Measured (time to first token, time per output token) pairs per provider/size group,
    groups ordered from fastest to slowest median latency for a 150-token answer."""

    names: list[str]
    ttft: list[FloatArray]
    tpot: list[FloatArray]

    def assign(self, models: Sequence[str], prices: Sequence[float]) -> dict[str, int]:
        """Each model's group by price rank: the cheapest model gets the fastest group, the
        dearest the slowest (small models are cheap and quick), spread evenly in between."""
        ranked = sorted(range(len(models)), key=lambda j: (prices[j], models[j]))
        last = max(len(models) - 1, 1)
        top = len(self.names) - 1
        return {models[j]: round(rank * top / last) for rank, j in enumerate(ranked)}

    def draw(self, group: int, size: int, rng: np.random.Generator) -> tuple[FloatArray, FloatArray]:
        """``size`` measured requests of ``group``, resampled (ttft and tpot from the same request)."""
        rows = rng.integers(0, self.ttft[group].shape[0], size)
        return self.ttft[group][rows], self.tpot[group][rows]


def load_latency(path: str | Path, min_requests: int = 100, max_error_rate: float = 0.1) -> LatencyGroups:
    """Groups of successful requests from an llmperf-style CSV (provider, size, ttft, inter-token).

    A group needs ``min_requests`` successes; one that failed more than ``max_error_rate`` of its
    requests measured an outage rather than a latency, and is left out.
    """
    file = Path(path)
    groups: dict[str, list[tuple[float, float]]] = {}
    failures: dict[str, int] = {}
    try:
        with file.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in _LATENCY_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise ReplayError(f"{file}: missing column(s) {', '.join(missing)}")
            for line, row in enumerate(reader, start=2):
                name = f"{row['provider']}/{row['llama2_size']}"
                ttft = _float(row["ttft_s"], f"{file}, line {line}")
                tpot = _float(row["inter_token_latency_s"], f"{file}, line {line}")
                if row["error_code"] or not (ttft > 0 and tpot > 0):
                    failures[name] = failures.get(name, 0) + 1
                else:
                    groups.setdefault(name, []).append((ttft, tpot))
    except OSError as exc:
        raise ReplayError(f"{file}: cannot read: {exc.strerror}") from exc
    kept = {
        name: np.array(pairs)
        for name, pairs in groups.items()
        if len(pairs) >= min_requests
        and failures.get(name, 0) <= max_error_rate * (len(pairs) + failures.get(name, 0))
    }
    if not kept:
        raise ReplayError(f"{file}: no provider/size group has {min_requests} successful requests")
    order = sorted(kept, key=lambda g: float(np.median(kept[g][:, 0] + 149 * kept[g][:, 1])))
    return LatencyGroups(order, [kept[g][:, 0].copy() for g in order], [kept[g][:, 1].copy() for g in order])


def _latencies(
    table: OutcomeTable, latency: LatencyGroups | str | Path | None, catalogue: Catalogue, seed: int
) -> tuple[FloatArray, FloatArray]:
    """(ttft, total latency) per (prompt, model): resampled from the measured groups, or constant."""
    shape = table.quality.shape
    if latency is None:
        ttft = np.full(shape, 0.8)
        tpot = np.full(shape, 0.02)
    else:
        groups = latency if isinstance(latency, LatencyGroups) else load_latency(latency)
        assignment = groups.assign(table.models, list(catalogue.price_completion))
        rng = np.random.default_rng([seed, 7])  # its own stream: the prompt order does not move it
        ttft, tpot = np.empty(shape), np.empty(shape)
        for j, model in enumerate(table.models):
            ttft[:, j], tpot[:, j] = groups.draw(assignment[model], shape[0], rng)
    return ttft, ttft + tpot * (table.output_tokens - 1)


# --- running the router through an outcome table ----------------------------------------------


@dataclass
class Arm:
    """One way of answering every prompt: mean quality, total cost, mean latency, mean utility."""

    name: str
    quality: float
    cost_usd: float
    latency_s: float
    utility: float  # the mode's score of what really happened (quality, cost, latency)


@dataclass
class OutcomeReplay:
    """The router against every fixed model and the per-prompt oracle, on the same prompts."""

    source: str
    policy: str
    mode: str
    weights: Weights3
    seed: int
    prompts: int
    dropped: int
    router: Arm
    fixed: list[Arm]
    oracle: Arm  # best quality per prompt, the cheapest among ties
    utility_oracle: float  # the mean of each prompt's best utility
    explored: int
    choices: list[str] = field(repr=False)
    quality_trace: FloatArray = field(repr=False)  # quality of each routed answer, in order
    cost_trace: FloatArray = field(repr=False)

    @property
    def best_fixed(self) -> Arm:
        """The best single model by quality (the cheaper among ties): the reference."""
        return max(self.fixed, key=lambda a: (a.quality, -a.cost_usd))

    @property
    def best_fixed_utility(self) -> Arm:
        return max(self.fixed, key=lambda a: a.utility)

    @property
    def regret_vs_best_fixed(self) -> float:
        return self.best_fixed.quality - self.router.quality

    @property
    def regret_vs_oracle(self) -> float:
        return self.oracle.quality - self.router.quality

    @property
    def quality_ratio(self) -> float:
        return self.router.quality / self.best_fixed.quality if self.best_fixed.quality else math.nan

    @property
    def cost_ratio(self) -> float:
        return self.router.cost_usd / self.best_fixed.cost_usd if self.best_fixed.cost_usd else math.nan

    def shares(self) -> dict[str, float]:
        counts: dict[str, int] = {}
        for model in self.choices:
            counts[model] = counts.get(model, 0) + 1
        return {m: c / max(len(self.choices), 1) for m, c in sorted(counts.items(), key=lambda kv: -kv[1])}

    def rows(self) -> list[dict[str, Any]]:
        """The comparison table: the router, the oracle, then every fixed model by quality."""
        ref = self.best_fixed
        arms = [self.router, self.oracle, *sorted(self.fixed, key=lambda a: -a.quality)]
        return [
            {
                "name": a.name,
                "quality": round(a.quality, 4),
                "cost_usd": round(a.cost_usd, 4),
                "latency_s": round(a.latency_s, 3),
                "utility": round(a.utility, 4),
                "quality_vs_ref": round(a.quality / ref.quality, 4) if ref.quality else None,
                "cost_vs_ref": round(a.cost_usd / ref.cost_usd, 4) if ref.cost_usd else None,
            }
            for a in arms
        ]

    def summary(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "policy": self.policy,
            "mode": self.mode,
            "weights": list(self.weights),
            "seed": self.seed,
            "prompts": self.prompts,
            "dropped": self.dropped,
            "reference": self.best_fixed.name,
            "quality_ratio": round(self.quality_ratio, 4),
            "cost_ratio": round(self.cost_ratio, 4),
            "regret_vs_best_fixed": round(self.regret_vs_best_fixed, 4),
            "regret_vs_oracle": round(self.regret_vs_oracle, 4),
            "utility_regret_vs_best_fixed": round(self.best_fixed_utility.utility - self.router.utility, 4),
            "utility_regret_vs_oracle": round(self.utility_oracle - self.router.utility, 4),
            "explored": self.explored,
        }

    def to_dict(self) -> dict[str, Any]:
        return {**self.summary(), "rows": self.rows(), "shares": self.shares()}


def _replay_router(
    catalogue: Catalogue, settings: Settings | None, policy: str, seed: int, temperature: float | None
) -> tuple[Router, SimClock]:
    base = settings if settings is not None else Settings()
    update: dict[str, Any] = {"policy": policy, "seed": seed}
    if temperature is not None:
        update["temperature"] = temperature
    tuned = base.model_copy(
        update={
            "exploration": base.exploration.model_copy(update=update),
            "routing": base.routing.model_copy(update={"fallback_models": []}),
        }
    )
    clock = SimClock()
    try:
        return Router.from_settings(tuned, catalogue, clock=clock), clock
    except ValueError as exc:
        raise ReplayError(str(exc)) from exc


def _utility(
    quality: FloatArray, cost: FloatArray, latency: FloatArray, weights: Weights3, router: Router
) -> FloatArray:
    """The score's three terms on realised outcomes (the router's scales), weighted."""
    ls, cs = router.config.latency_scale, router.config.cost_scale
    lat = np.clip((np.log(np.maximum(latency, 1e-15)) - ls.log_low) * ls.inv_range, 0.0, 1.0)
    cst = np.clip((np.log(np.maximum(cost, 1e-15)) - cs.log_low) * cs.inv_range, 0.0, 1.0)
    result: FloatArray = weights[0] * (1 - lat) + weights[1] * (1 - cst) + weights[2] * quality
    return result


def replay_outcomes(
    table: OutcomeTable | str | Path,
    prompts: str | Path | None = None,
    settings: Settings | None = None,
    policy: str = "ucb",
    mode: str | None = "quality",
    seed: int = 0,
    shuffle: bool = True,
    limit: int | None = None,
    latency: LatencyGroups | str | Path | None = None,
    *,
    weights: Weights3 | None = None,
    temperature: float | None = None,
    source: str | None = None,
    seconds_per_request: float = 1.0,
    progress: Progress | None = None,
) -> OutcomeReplay:
    """Run the real router once through the table's prompts (shuffled with ``seed``), learning.

    Each prompt is profiled by the router's own profiler; the chosen model's true quality is fed
    back as feedback, its true cost and a latency resampled from ``latency`` (the measured
    groups, or a CSV path; None: the same constant latency for every model) as the outcome.
    The catalogue has the table's models priced from their mean cost per token and equal,
    neutral priors, so every preference is learned. ``settings`` supplies the learning and
    scoring settings (default: ``Settings()``); ``policy``, ``seed`` and ``temperature`` override.
    """
    if not isinstance(table, OutcomeTable):
        table = load_outcomes(table, prompts, source=source)
    order = np.random.default_rng(seed).permutation(len(table)) if shuffle else np.arange(len(table))
    order = order[:limit] if limit else order
    catalogue = outcome_catalogue(table)
    router, clock = _replay_router(catalogue, settings, policy, seed, temperature)
    mode_name, used = router.weights_for(mode, weights)
    ttft, total = _latencies(table, latency, catalogue, seed)
    chosen, explored = _route_all(
        router, clock, table, order, ttft, total, (mode, weights), seconds_per_request, progress
    )
    q, c, lat = table.quality[order], table.cost[order], total[order]
    util = _utility(q, c, lat, used, router)
    rows = np.arange(order.shape[0])
    best = q.max(axis=1)
    pick = np.where(q >= best[:, None], c, np.inf).argmin(axis=1)
    return OutcomeReplay(
        source=table.source,
        policy=policy,
        mode=mode_name,
        weights=used,
        seed=seed,
        prompts=int(order.shape[0]),
        dropped=table.dropped,
        router=_arm(f"router ({policy}, {mode_name})", q, c, lat, util, rows, chosen),
        fixed=[_arm(m, q, c, lat, util, rows, np.full_like(chosen, j)) for j, m in enumerate(table.models)],
        oracle=_arm("oracle (per prompt)", q, c, lat, util, rows, pick),
        utility_oracle=float(util.max(axis=1).mean()),
        explored=explored,
        choices=[table.models[j] for j in chosen],
        quality_trace=q[rows, chosen],
        cost_trace=c[rows, chosen],
    )


def _arm(
    name: str, q: FloatArray, c: FloatArray, lat: FloatArray, util: FloatArray, rows: IntArray, pick: IntArray
) -> Arm:
    return Arm(
        name,
        float(q[rows, pick].mean()),
        float(c[rows, pick].sum()),
        float(lat[rows, pick].mean()),
        float(util[rows, pick].mean()),
    )


def _route_all(
    router: Router,
    clock: SimClock,
    table: OutcomeTable,
    order: IntArray,
    ttft: FloatArray,
    total: FloatArray,
    how: tuple[str | None, Weights3 | None],
    seconds_per_request: float,
    progress: Progress | None,
) -> tuple[IntArray, int]:
    """Decide, observe the table's truth, record and feed back, prompt after prompt."""
    column = {m: j for j, m in enumerate(table.models)}
    chosen = np.empty(order.shape[0], np.intp)
    explored, n = 0, int(order.shape[0])
    for step, p in enumerate(order.tolist()):
        decision = router.decide(RouteRequest(prompt=table.texts[p], mode=how[0], weights=how[1]))
        j = column[decision.model]
        outcome = Outcome(
            model=decision.model,
            success=True,
            latency_s=float(total[p, j]),
            ttft_s=float(ttft[p, j]),
            completion_tokens=int(table.output_tokens[p, j]),
            cost_usd=float(table.cost[p, j]),
        )
        router.record(decision, outcome)
        router.feedback(decision.request_id, min(max(float(table.quality[p, j]), 0.0), 1.0))
        chosen[step] = j
        explored += decision.explored
        clock.advance(seconds_per_request)
        if progress is not None and (step % 64 == 63 or step == n - 1):
            progress(step + 1, n)
    return chosen, explored


# --- cost-quality curves ---------------------------------------------------------------------

CURVE_QUALITY_WEIGHTS = (0.2, 0.35, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


@dataclass
class CurvePoint:
    quality_weight: float
    weights: Weights3
    quality: float
    cost_usd: float
    quality_ratio: float  # relative to the best single model by quality
    cost_ratio: float


def curve_weights(quality_weight: float) -> Weights3:
    """Quality weight ``q``; the rest split 1:2 between latency and cost, as in the quality mode."""
    rest = 1.0 - quality_weight
    return (rest / 3.0, 2.0 * rest / 3.0, quality_weight)


def cost_quality_curve(
    table: OutcomeTable,
    settings: Settings | None = None,
    policy: str = "ucb",
    quality_weights: Iterable[float] = CURVE_QUALITY_WEIGHTS,
    seed: int = 0,
    limit: int | None = None,
    latency: LatencyGroups | str | Path | None = None,
    *,
    progress: Progress | None = None,
) -> list[CurvePoint]:
    """Quality against cost as the quality weight grows, like RouteLLM's curves: one replay each."""
    weights_list = list(quality_weights)
    points = []
    for i, qw in enumerate(weights_list):
        step = None if progress is None else _offset_progress(progress, i, len(weights_list))
        report = replay_outcomes(
            table,
            None,
            settings,
            policy,
            None,
            seed,
            True,
            limit,
            latency,
            weights=curve_weights(qw),
            progress=step,
        )
        points.append(
            CurvePoint(
                qw,
                report.weights,
                report.router.quality,
                report.router.cost_usd,
                report.quality_ratio,
                report.cost_ratio,
            )
        )
    return points


def _offset_progress(progress: Progress, index: int, runs: int) -> Progress:
    def step(done: int, total: int) -> None:
        progress(index * total + done, runs * total)

    return step
