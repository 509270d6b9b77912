"""The router run through outcome tables: every model's quality and cost for each prompt known.

    table = load_outcomes("outcomes.csv", source="routerbench")
    report = replay_outcomes(table, policy="ucb", mode="quality", seed=1, latency=load_latency(csv))
    report.router.quality, report.router.cost_usd, report.regret_vs_oracle

The router learns online in one pass over the prompts (profiled by its own profiler), fed the
true quality and cost as outcomes and feedback, with latency drawn from measured
distributions (:func:`load_latency` over the llmperf leaderboard's requests). Reports compare it
with every fixed model and the per-prompt oracle; :func:`cost_quality_curve` (``_curves``) sweeps
the quality weight, like RouteLLM's curves.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .._errors import ReplayError
from .._settings import Settings
from ..core._catalogue import Catalogue, Model
from ..core._decision import Outcome, RouteRequest
from ..core._profile import estimate_tokens
from ..core._router import Router
from ..simulator._lab import SimClock

__all__ = [
    "Arm",
    "LatencyGroups",
    "OutcomeReplay",
    "OutcomeTable",
    "load_latency",
    "load_outcomes",
    "outcome_catalogue",
    "replay_outcomes",
    "table_sources",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]
Weights3 = tuple[float, float, float]
Progress = Callable[[int, int], None]
OUTCOME_COLUMNS = ("source", "prompt_id", "model", "quality", "cost_usd")


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
    explored: int  # answers the policy chose to learn from (not the best-scoring model)
    choices: list[str] = field(repr=False)
    quality_trace: FloatArray = field(repr=False)  # quality of each routed answer, in order
    cost_trace: FloatArray = field(repr=False)  # each answer's cost, with its shadow's when it had one
    shadows: int = 0  # exploratory picks sent beside the answer (exploration by shadow)
    shadow_cost_usd: float = 0.0  # what they cost: in the router's cost too

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
            "quality_ratio": round(self.quality_ratio, 4) if self.best_fixed.quality else None,
            "cost_ratio": round(self.cost_ratio, 4) if self.best_fixed.cost_usd else None,
            "regret_vs_best_fixed": round(self.regret_vs_best_fixed, 4),
            "regret_vs_oracle": round(self.regret_vs_oracle, 4),
            "utility_regret_vs_best_fixed": round(self.best_fixed_utility.utility - self.router.utility, 4),
            "utility_regret_vs_oracle": round(self.utility_oracle - self.router.utility, 4),
            "explored": self.explored,
            "shadows": self.shadows,
            "shadow_cost_usd": round(self.shadow_cost_usd, 4),
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
    cst = cs.norm_array(cost)
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
    shadow_explore: bool | None = None,
) -> OutcomeReplay:
    """Run the real router once through the table's prompts (shuffled with ``seed``), learning.

    Each prompt is profiled by the router's own profiler; the chosen model's true quality is fed
    back as feedback, its true cost and a latency resampled from ``latency`` (the measured
    groups, or a CSV path; None: the same constant latency for every model) as the outcome.
    The catalogue has the table's models priced from their mean cost per token and equal,
    neutral priors, so every preference is learned. ``settings`` supplies the learning and
    scoring settings (default: ``Settings()``); ``policy``, ``seed`` and ``temperature`` override.
    ``shadow_explore`` (default: ``evaluation.shadow.explore``): explore by shadow, as the service
    does with a judge: an exploratory pick does not answer, the best-scoring model does; the pick's
    true quality is fed back too and its cost is added to the router's (no budget).
    """
    if not isinstance(table, OutcomeTable):
        table = load_outcomes(table, prompts, source=source)
    order = np.random.default_rng(seed).permutation(len(table)) if shuffle else np.arange(len(table))
    order = order[:limit] if limit else order
    catalogue = outcome_catalogue(table)
    router, clock = _replay_router(catalogue, settings, policy, seed, temperature)
    if shadow_explore is None:
        evaluation = (settings or Settings()).evaluation
        shadow_explore = evaluation.enabled and evaluation.shadow.explore
    if shadow_explore:
        router.shadow_gate = _always
    mode_name, used = router.weights_for(mode, weights)
    ttft, total = _latencies(table, latency, catalogue, seed)
    chosen, explored, shadowed, shadow_cost = _route_all(
        router, clock, table, order, ttft, total, (mode, weights), seconds_per_request, progress
    )
    q, c, lat = table.quality[order], table.cost[order], total[order]
    util = _utility(q, c, lat, used, router)
    rows = np.arange(order.shape[0])
    best = q.max(axis=1)
    pick = np.where(q >= best[:, None], c, np.inf).argmin(axis=1)
    arm = _arm(f"router ({policy}, {mode_name})", q, c, lat, util, rows, chosen)
    if shadowed:  # the shadows are paid for: in the router's cost and in its score's cost term
        arm.cost_usd += float(shadow_cost.sum())
        paid = c[rows, chosen] + shadow_cost
        arm.utility = float(_utility(q[rows, chosen], paid, lat[rows, chosen], used, router).mean())
    return OutcomeReplay(
        source=table.source,
        policy=policy,
        mode=mode_name,
        weights=used,
        seed=seed,
        prompts=int(order.shape[0]),
        dropped=table.dropped,
        router=arm,
        fixed=[_arm(m, q, c, lat, util, rows, np.full_like(chosen, j)) for j, m in enumerate(table.models)],
        oracle=_arm("oracle (per prompt)", q, c, lat, util, rows, pick),
        utility_oracle=float(util.max(axis=1).mean()),
        explored=explored,
        choices=[table.models[j] for j in chosen],
        quality_trace=q[rows, chosen],
        cost_trace=c[rows, chosen] + shadow_cost,
        shadows=shadowed,
        shadow_cost_usd=float(shadow_cost.sum()),
    )


def _always() -> bool:
    return True


def _score(table: OutcomeTable, prompt: int, model: int) -> float:
    """The table's quality of ``model``'s answer to ``prompt`` as feedback: clipped to [0, 1]."""
    return min(max(float(table.quality[prompt, model]), 0.0), 1.0)


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
) -> tuple[IntArray, int, int, FloatArray]:
    """Decide, observe the table's truth, record and feed back, prompt after prompt. A decision's
    shadow (exploration by shadow) is judged perfectly: its true quality is fed back in the
    request's cell. The chosen rows, the explorations on the answer and beside it, and each
    prompt's shadow cost."""
    column = {m: j for j, m in enumerate(table.models)}
    chosen = np.empty(order.shape[0], np.intp)
    shadow_cost = np.zeros(order.shape[0])
    explored, shadowed, n = 0, 0, int(order.shape[0])
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
        router.feedback(decision.request_id, _score(table, p, j))
        if decision.shadow is not None:
            k = column[decision.shadow]
            router.learner.feedback(k, decision.profile.cell, clock(), _score(table, p, k))
            shadow_cost[step] = table.cost[p, k]
            shadowed += 1
        chosen[step] = j
        explored += decision.explored
        clock.advance(seconds_per_request)
        if progress is not None and (step % 64 == 63 or step == n - 1):
            progress(step + 1, n)
    return chosen, explored, shadowed, shadow_cost
