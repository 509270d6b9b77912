"""Learning: regret, adaptation to a slow-down, and RouterBench learned online, per policy.

    python3 benchmarks/learning.py            # full run (about a minute)
    python3 benchmarks/learning.py --quick    # a smoke run (about 15 seconds)
    python3 benchmarks/learning.py --data ../shared/data
    python3 benchmarks/learning.py --cells task_and_length --length-buckets 128,512,2048 \
        --output /tmp/learning.json           # another profile setting (default: Settings())

1. Regret in a scripted simulation (adaptive_router.simulate): six models the catalogue cannot
   tell apart (equal priors and prices), default weights; the sum over N requests of the best
   model's true score less the chosen model's (the best fixed model in hindsight is the best
   in expectation: the world is stationary).
2. Adaptation: in speed mode, the model carrying the traffic at request T slows down fivefold;
   the number of requests after T until the next 20 requests send it at most 20% of traffic
   ("80% moved off"); it recovers at T2, and the number of requests until the next 20 send it
   half of the traffic again.
3. RouterBench (source == "routerbench" in outcomes/outcomes.csv; 11 models, 3 datasets): the
   router learns online in one pass over shuffled prompts, profiling each prompt with its own
   profiler (no dataset labels), with equal neutral priors; latency resampled from the
   llmperf measurements. Quality and cost relative to gpt-4-1106-preview in quality-leaning
   settings. The issue's goal: >= 95% of its accuracy at <= 40% of its cost. The "profile
   ceiling" is the best any router can do that picks one model per learner cell of the
   profiler in use (task class, or task class and length bucket; the best pure assignment under
   the cost cap, knowing the truth): learning per cell cannot beat it. The "dataset-label
   ceiling" is the same with the dataset's own label as the cell: what a perfect profiler
   could reach.

Writes benchmarks/results/learning.json and prints one table per part.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from adaptive_router import Settings
from adaptive_router._bench import machine_info
from adaptive_router._settings import ProfileSettings
from adaptive_router.core import Router, RouteRequest, scales_from_settings
from adaptive_router.offline import (
    LatencyGroups,
    OutcomeTable,
    curve_weights,
    load_latency,
    load_outcomes,
    outcome_catalogue,
    replay_outcomes,
)
from adaptive_router.simulator import LAB_IDS, lab, run

POLICIES = ["ucb", "thompson", "softmax", "greedy"]
RESULTS = Path(__file__).resolve().parent / "results" / "learning.json"
DEFAULT_DATA = Path(
    os.environ.get("ADAPTIVE_ROUTER_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)
REFERENCE = "gpt-4-1106-preview"
FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]
GOAL_QUALITY, GOAL_COST, GOAL_WORST = 0.95, 0.40, 0.93

IDS = LAB_IDS
PROMPT = RouteRequest(prompt="Tell me about the sea.", max_tokens=200)


# --- 1. regret --------------------------------------------------------------------------------


def regret(policy: str, seed: int, requests: int) -> dict[str, Any]:
    router, clock, world = lab(policy, seed)
    weights = router.weights_for(None, None)[1]
    truth = np.array(world.expected_score(weights, router, router.profile(PROMPT).prompt_tokens))
    trace = run(router, world, requests, clock, seconds_per_request=0.5, seed=seed)
    chosen = np.array([IDS.index(m) for m in trace.chosen])
    lost = truth.max() - truth[chosen]
    best = IDS[int(truth.argmax())]
    tail = max(requests // 5, 1)
    return {
        "regret": float(lost.sum()),
        "regret_last_fifth_per_request": float(lost[-tail:].mean()),
        "best_share_last_fifth": trace.share(best, start=requests - tail),
    }


# --- 2. adaptation ----------------------------------------------------------------------------


def _first(chosen: list[str], model: str, ok: Callable[[float], bool], window: int = 20) -> int | None:
    """The first request k from which the next ``window`` requests' share of ``model`` is ``ok``."""
    for k in range(len(chosen) - window + 1):
        if ok(sum(1 for m in chosen[k : k + window] if m == model) / window):
            return k
    return None


def adaptation(policy: str, seed: int, slow_at: int, recover_at: int, requests: int) -> dict[str, Any]:
    """Slow down the best model in speed mode (by the truth) fivefold at ``slow_at``; restore it
    at ``recover_at``. Counts requests until the next 20 send it at most 20% of the traffic, and
    after recovery until the next 20 send it at least half the share it had before. Also: the
    share of requests that explored in the stationary stretch before the slowdown (after 500)."""
    router, clock, world = lab(policy, seed)
    weights = router.weights_for("speed", None)[1]
    truth = world.expected_score(weights, router, router.profile(PROMPT).prompt_tokens)
    best = IDS[int(np.argmax(truth))]
    before = run(router, world, slow_at, clock, mode="speed", seed=seed)
    share_before = before.share(best, slow_at - 200)
    world.slow_down(best, 5.0)
    slow = run(router, world, recover_at - slow_at, clock, mode="speed", seed=seed + 1_000)
    world.slow_down(best, 0.2)
    after = run(router, world, requests - recover_at, clock, mode="speed", seed=seed + 2_000)
    return {
        "share_before": share_before,
        "explored_share_stationary": float(np.mean(before.explored[500:])),
        "requests_to_move_80pct_off": _first(slow.chosen, best, lambda share: share <= 0.2),
        "slowed_model_picks_in_first_50": sum(1 for m in slow.chosen[:50] if m == best),
        "share_while_slow": slow.share(best, 100),
        "requests_to_regain_half": _first(after.chosen, best, lambda share: share >= 0.5 * share_before),
        "share_after_recovery": after.share(best, 200),
    }


# --- 3. RouterBench ---------------------------------------------------------------------------


def settings_grid(quick: bool) -> list[tuple[str, str | None, tuple[float, float, float] | None]]:
    grid: list[tuple[str, str | None, tuple[float, float, float] | None]] = [
        ("quality mode (0.1, 0.2, 0.7)", "quality", None)
    ]
    for qw in (0.8,) if quick else (0.8, 0.9):
        w = curve_weights(qw)
        grid.append((f"quality weight {qw} ({w[0]:.3f}, {w[1]:.3f}, {qw})", None, w))
    return grid


def routerbench(
    table: OutcomeTable,
    latency: LatencyGroups | None,
    policy: str,
    seeds: list[int],
    limit: int | None,
    quick: bool,
    settings: Settings,
) -> list[dict[str, Any]]:
    rows = []
    for label, mode, weights in settings_grid(quick):
        runs = [
            replay_outcomes(table, None, settings, policy, mode, seed, True, limit, latency, weights=weights)
            for seed in seeds
        ]
        ref = [next(a for a in r.fixed if a.name == REFERENCE) for r in runs]
        q = np.array([r.router.quality / f.quality for r, f in zip(runs, ref, strict=True)])
        c = np.array([r.router.cost_usd / f.cost_usd for r, f in zip(runs, ref, strict=True)])
        rows.append(
            {
                "policy": policy,
                "setting": label,
                "quality_vs_gpt4": float(q.mean()),
                "cost_vs_gpt4": float(c.mean()),
                "quality_vs_gpt4_per_seed": q.round(4).tolist(),
                "cost_vs_gpt4_per_seed": c.round(4).tolist(),
                "regret_vs_best_fixed": float(np.mean([r.regret_vs_best_fixed for r in runs])),
                "regret_vs_oracle": float(np.mean([r.regret_vs_oracle for r in runs])),
                "goal_met": bool(q.mean() >= GOAL_QUALITY and c.mean() <= GOAL_COST),
            }
        )
    return rows


def _pareto(
    cost: FloatArray, quality: FloatArray, picks: IntArray
) -> tuple[FloatArray, FloatArray, IntArray]:
    """The points no other point beats on both cost and quality, cheapest first."""
    order = np.lexsort((-quality, cost))
    cost, quality, picks = cost[order], quality[order], picks[order]
    best_before = np.maximum.accumulate(np.concatenate(([-np.inf], quality[:-1])))
    keep = quality > best_before
    return cost[keep], quality[keep], picks[keep]


def cell_ceiling(table: OutcomeTable, cells: IntArray, cost_cap: float = GOAL_COST) -> dict[str, Any]:
    """The best quality within ``cost_cap`` (both relative to the reference) of any router that
    picks one model per cell of ``cells`` knowing the truth ("pure", exact: the cells' options
    are combined one cell at a time, keeping the cost-quality Pareto front), or that mixes two
    such assignments ("mixed", the upper envelope at the cap)."""
    ref = table.models.index(REFERENCE)
    present = sorted(set(cells.tolist()))
    q_cell = np.array([table.quality[cells == c].sum(axis=0) for c in present])
    q_cell /= len(table) * table.quality[:, ref].mean()
    c_cell = np.array([table.cost[cells == c].sum(axis=0) for c in present]) / table.cost[:, ref].sum()
    m = len(table.models)
    cost, quality, picks = np.zeros(1), np.zeros(1), np.zeros((1, 0), np.intp)
    for k in range(len(present)):
        front = cost.shape[0]
        cost = (cost[:, None] + c_cell[k][None, :]).ravel()
        quality = (quality[:, None] + q_cell[k][None, :]).ravel()
        picks = np.hstack([np.repeat(picks, m, axis=0), np.tile(np.arange(m), front)[:, None]])
        cost, quality, picks = _pareto(cost, quality, picks)
    under = cost <= cost_cap
    qa, ca = quality[under][:, None], cost[under][:, None]
    qb, cb = quality[~under][None, :], cost[~under][None, :]
    mixed = np.where(cb > ca, qa + (cost_cap - ca) / np.maximum(cb - ca, 1e-12) * (qb - qa), qa)
    best = int(np.flatnonzero(under)[quality[under].argmax()])
    return {
        "pure_quality_vs_gpt4": float(quality[best]),
        "pure_cost_vs_gpt4": float(cost[best]),
        "pure_assignment": {int(c): table.models[j] for c, j in zip(present, picks[best], strict=True)},
        "mixed_quality_vs_gpt4": float(mixed.max(initial=float(quality[best]))),
    }


def profile_ceiling(table: OutcomeTable, settings: Settings, cost_cap: float = GOAL_COST) -> dict[str, Any]:
    """``cell_ceiling`` over the cells the router's own profiler (under ``settings``) assigns."""
    router = Router.from_settings(settings, outcome_catalogue(table))
    cells = np.array([router.profile(RouteRequest(prompt=t)).cell for t in table.texts])
    names = router.profiler.cells
    result = cell_ceiling(table, cells, cost_cap)
    result["pure_assignment"] = {names[c]: model for c, model in result["pure_assignment"].items()}
    result["cell_counts"] = {names[c]: int((cells == c).sum()) for c in sorted(set(cells.tolist()))}
    return result


def dataset_ceiling(table: OutcomeTable, cost_cap: float = GOAL_COST) -> dict[str, Any]:
    """``cell_ceiling`` with the dataset label as the cell: what a perfect profiler could reach."""
    labels, cells = np.unique(np.array(table.datasets), return_inverse=True)
    result = cell_ceiling(table, cells.astype(np.intp), cost_cap)
    result["pure_assignment"] = {str(labels[c]): model for c, model in result["pure_assignment"].items()}
    return result


# --- 4. the curve against the two-fixed-model hull ---------------------------------------------

# Quality weight q, cost weight 1 - q, latency weight 0: the hull is drawn in cost and quality
# only, and a latency term would pull the router off it on purpose (cheap models are fast here).
SWEEP = (0.3, 0.5, 0.6, 0.7, 0.8, 0.9)


def sweep_weights(quality_weight: float) -> tuple[float, float, float]:
    return (0.0, 1.0 - quality_weight, quality_weight)


# Public list prices (USD per million tokens, input/output) for tables without costs (routellm):
# OpenAI's for gpt-4-1106-preview, a typical hosted price for Mixtral-8x7B-Instruct.
LIST_PRICES = {
    "gpt-4-1106-preview": (10.0, 30.0),
    "mistralai/Mixtral-8x7B-Instruct-v0.1": (0.6, 0.6),
}


def hull_quality(cost: FloatArray, quality: FloatArray, at: float) -> float:
    """The best quality a random mix of two fixed models reaches at cost ``at`` (the upper
    concave envelope of the single models' (cost, quality) points, flat past the best one)."""
    order = np.lexsort((-quality, cost))
    pts: list[tuple[float, float]] = []
    for c, q in zip(cost[order].tolist(), quality[order].tolist(), strict=True):
        if pts and q <= pts[-1][1]:
            continue  # dominated: costs more, no better
        while len(pts) >= 2 and _cross(pts[-2], pts[-1], (c, q)) >= 0:
            pts.pop()
        pts.append((c, q))
    if at <= pts[0][0]:
        return pts[0][1]
    for (c0, q0), (c1, q1) in itertools.pairwise(pts):
        if at <= c1:
            return q0 + (q1 - q0) * (at - c0) / (c1 - c0)
    return pts[-1][1]


def _cross(o: tuple[float, float], a: tuple[float, float], b: tuple[float, float]) -> float:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def impute_costs(table: OutcomeTable) -> OutcomeTable:
    """Costs from list prices where the table has none: prompt tokens (4 characters each) at the
    input price and the table's output tokens (300 where unknown) at the output price."""
    if table.cost.any():
        return table
    tokens = np.array([max(1.0, len(t) / 4.0) for t in table.texts])
    for j, model in enumerate(table.models):
        price_in, price_out = LIST_PRICES.get(model, (1.0, 1.0))
        table.cost[:, j] = (tokens * price_in + table.output_tokens[:, j] * price_out) / 1e6
    return table


def profile_cells(table: OutcomeTable, settings: Settings) -> IntArray:
    """The learner cell the router's own profiler (under ``settings``) gives each prompt."""
    router = Router.from_settings(settings, outcome_catalogue(table))
    return np.array([router.profile(RouteRequest(prompt=t)).cell for t in table.texts], dtype=np.intp)


def cell_oracle(
    table: OutcomeTable,
    cells: IntArray,
    rows: IntArray,
    weights: tuple[float, float, float],
    settings: Settings,
) -> tuple[float, float]:
    """What the router's score reaches on ``rows`` knowing the truth per cell: in each cell, the
    model with the best mean score (the score's cost and quality terms on the true outcomes,
    latency left out as in the sweep), for every prompt of the cell. Mean quality and total cost:
    the bound on the score that learning per cell approaches (on points over the hull it is a
    guide, not a bound: a choice with a worse score can sit further above the hull)."""
    cs = scales_from_settings(settings.routing)[1]
    q, c, cell = table.quality[rows], table.cost[rows], cells[rows]
    norm = cs.norm_array(c)
    utility = weights[1] * (1.0 - norm) + weights[2] * q
    present, inverse = np.unique(cell, return_inverse=True)
    sums = np.zeros((present.shape[0], q.shape[1]))
    np.add.at(sums, inverse, utility)
    pick = sums.argmax(axis=1)[inverse]
    at = np.arange(rows.shape[0])
    return float(q[at, pick].mean()), float(c[at, pick].sum())


def full_information_online(
    table: OutcomeTable,
    cells: IntArray,
    rows: IntArray,
    weights: tuple[float, float, float],
    settings: Settings,
) -> tuple[float, float]:
    """Learning per cell online as the router does, but seeing every model's answer to every
    prompt (what a shadow call to each model and a perfect judge would buy): in ``rows`` order,
    each prompt goes to the best score on the running estimates (each cell's mean quality shrunk
    toward the model's overall mean with ``cell_prior_strength``, that toward the prior 0.5 with
    ``prior_strength``; the prompt's own cost), then every model's outcome is added. Between the
    per-cell oracle and this lies what learning online costs; between this and the router, what
    seeing only the chosen model's answer (bandit feedback) costs. Mean quality and total cost."""
    learning = settings.learning
    cs = scales_from_settings(settings.routing)[1]
    k = learning.prior_strength
    k_cell = learning.cell_prior_strength if isinstance(learning.cell_prior_strength, float) else 20.0
    q, c = table.quality[rows], table.cost[rows]
    cost_term = weights[1] * (1.0 - cs.norm_array(c))
    models = q.shape[1]
    s_cell, w_cell = np.zeros((int(cells.max()) + 1, models)), np.zeros(int(cells.max()) + 1)
    s_all, w_all = np.zeros(models), 0.0
    pick = np.empty(rows.shape[0], np.intp)
    for i, cell in enumerate(cells[rows].tolist()):
        overall = (k * 0.5 + s_all) / (k + w_all)
        estimate = (k_cell * overall + s_cell[cell]) / (k_cell + w_cell[cell])
        pick[i] = int(np.argmax(cost_term[i] + weights[2] * estimate))
        s_cell[cell] += q[i]
        w_cell[cell] += 1.0
        s_all += q[i]
        w_all += 1.0
    at = np.arange(rows.shape[0])
    return float(q[at, pick].mean()), float(c[at, pick].sum())


def curve(
    table: OutcomeTable,
    latency: LatencyGroups | None,
    policy: str,
    seeds: list[int],
    limit: int | None,
    settings: Settings,
    sweep: tuple[float, ...] = SWEEP,
) -> list[dict[str, Any]]:
    """Per weight: the router's quality and cost (vs the reference), the hull at its cost, and
    the points (of accuracy, x100) gained over it; mean and worst of the seeds. Beside them, the
    per-cell oracle (``cell_oracle``) on the same prompts, and its points over the hull."""
    rows = []
    cells = profile_cells(table, settings)
    base, _, how = policy.partition("+")  # "ucb+shadow": explore by shadow (evaluation.shadow.explore)
    for qw in sweep:
        gains, qs, cs, hs, oq, oc, og, fg, shadows = [], [], [], [], [], [], [], [], []
        for seed in seeds:
            r = replay_outcomes(
                table,
                None,
                settings,
                base,
                None,
                seed,
                True,
                limit,
                latency,
                weights=sweep_weights(qw),
                shadow_explore=how == "shadow",
            )
            shadows.append(r.shadows / r.prompts)
            order = np.random.default_rng(seed).permutation(len(table))[: limit or None]  # as replayed
            o_quality, o_cost = cell_oracle(table, cells, order, sweep_weights(qw), settings)
            fixed_c = np.array([a.cost_usd for a in r.fixed])
            fixed_q = np.array([a.quality for a in r.fixed])
            ref = next(a for a in r.fixed if a.name == REFERENCE)
            hull = hull_quality(fixed_c, fixed_q, r.router.cost_usd)
            gains.append(100.0 * (r.router.quality - hull))
            qs.append(r.router.quality / ref.quality)
            cs.append(r.router.cost_usd / ref.cost_usd)
            hs.append(hull / ref.quality)
            oq.append(o_quality / ref.quality)
            oc.append(o_cost / ref.cost_usd)
            og.append(100.0 * (o_quality - hull_quality(fixed_c, fixed_q, o_cost)))
            f_quality, f_cost = full_information_online(table, cells, order, sweep_weights(qw), settings)
            fg.append(100.0 * (f_quality - hull_quality(fixed_c, fixed_q, f_cost)))
        rows.append(
            {
                "policy": policy,
                "quality_weight": qw,
                "weights": [round(w, 4) for w in sweep_weights(qw)],
                "quality_vs_ref": float(np.mean(qs)),
                "quality_vs_ref_worst": float(np.min(qs)),
                "cost_vs_ref": float(np.mean(cs)),
                "cost_vs_ref_worst": float(np.max(cs)),
                "hull_quality_vs_ref": float(np.mean(hs)),  # the two-model mix at the router's cost
                "points_over_hull": float(np.mean(gains)),
                "points_over_hull_worst": float(np.min(gains)),
                "cell_oracle": {
                    "quality_vs_ref": float(np.mean(oq)),
                    "cost_vs_ref": float(np.mean(oc)),
                    "points_over_hull": float(np.mean(og)),
                },
                "full_information_online": {"points_over_hull": float(np.mean(fg))},
                "shadow_share": float(np.mean(shadows)),  # shadows per answer (their cost is counted)
                "per_seed": {
                    "hull_quality": np.round(hs, 4).tolist(),
                    "quality": np.round(qs, 4).tolist(),
                    "cost": np.round(cs, 4).tolist(),
                    "points_over_hull": np.round(gains, 2).tolist(),
                },
            }
        )
    return rows


def curve_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One policy's curve in a few figures: points over the hull on average over the sweep and at
    its lowest point (mean of seeds, and the worst seed), and the goal: the best quality (mean of
    seeds) at a sweep point costing <= 40% of the reference, with its worst seed."""
    gains = [r["points_over_hull"] for r in rows]
    worst = [r["points_over_hull_worst"] for r in rows]
    cheap = [r for r in rows if r["cost_vs_ref"] <= GOAL_COST]
    best = max(cheap, key=lambda r: r["quality_vs_ref"], default=None)
    goal: dict[str, Any] = {"met": False, "quality_weight": None}
    if best is not None:
        goal = {
            "quality_weight": best["quality_weight"],
            "quality_vs_ref": best["quality_vs_ref"],
            "quality_vs_ref_worst": best["quality_vs_ref_worst"],
            "cost_vs_ref": best["cost_vs_ref"],
            "met": best["quality_vs_ref"] >= GOAL_QUALITY and best["quality_vs_ref_worst"] >= GOAL_WORST,
        }
    return {
        "points_over_hull_mean": float(np.mean(gains)),
        "cell_oracle_points_over_hull_mean": float(
            np.mean([r["cell_oracle"]["points_over_hull"] for r in rows])
        ),
        "full_information_online_points_over_hull_mean": float(
            np.mean([r["full_information_online"]["points_over_hull"] for r in rows])
        ),
        "cell_oracle_points_over_hull_lowest": float(
            np.min([r["cell_oracle"]["points_over_hull"] for r in rows])
        ),
        "points_over_hull_lowest": float(np.min(gains)),
        "shadow_share_mean": float(np.mean([r.get("shadow_share", 0.0) for r in rows])),
        "points_over_hull_worst_seed_mean": float(np.mean(worst)),
        "points_over_hull_worst_seed_lowest": float(np.min(worst)),
        "best_within_40pct_cost": goal,
        "goals_met": {
            "plus_2_points_on_average": float(np.mean(gains)) >= 2.0,
            "never_below_the_hull": float(np.min(gains)) >= 0.0,
            "95pct_quality_at_40pct_cost": goal["met"],
        },
    }


# --- running and printing ---------------------------------------------------------------------


def machine() -> dict[str, Any]:
    return machine_info(("numpy",))


def run_all(quick: bool, data: Path, settings: Settings) -> dict[str, Any]:
    seeds = [1] if quick else [1, 2, 3]
    n = 1_000 if quick else 3_000
    slow_at, recover_at, total = (400, 800, 1_200) if quick else (1_000, 2_000, 3_000)
    result: dict[str, Any] = {"benchmark": "learning", "quick": quick, "machine": machine(), "seeds": seeds}
    result["profile"] = {"cells": settings.profile.cells, "length_buckets": settings.profile.length_buckets}
    result["simulation"] = {"requests": n, "rows": []}
    result["adaptation"] = {"slow_at": slow_at, "recover_at": recover_at, "requests": total, "rows": []}
    for policy in POLICIES:
        runs = [regret(policy, s, n) for s in seeds]
        result["simulation"]["rows"].append({"policy": policy, **_mean(runs)})
        runs = [adaptation(policy, s, slow_at, recover_at, total) for s in seeds]
        result["adaptation"]["rows"].append({"policy": policy, **_mean(runs)})
        print(f"  {policy}: simulation done", file=sys.stderr)
    table_path = data / "outcomes" / "outcomes.csv"
    if not table_path.is_file():
        result["routerbench"] = {"skipped": f"{table_path} not found"}
        return result
    table = load_outcomes(table_path, source="routerbench")
    latency_path = data / "latency" / "llmperf_requests.csv"
    latency = load_latency(latency_path) if latency_path.is_file() else None
    limit = 1_200 if quick else None
    rows = []
    for policy in POLICIES:
        rows += routerbench(table, latency, policy, seeds, limit, quick, settings)
        print(f"  {policy}: routerbench done", file=sys.stderr)
    ref = table.models.index(REFERENCE)
    result["routerbench"] = {
        "prompts": limit or len(table),
        "dropped_incomplete": table.dropped,
        "reference": REFERENCE,
        "reference_quality": float(table.quality[:, ref].mean()),
        "goal": {"quality_vs_gpt4": GOAL_QUALITY, "cost_vs_gpt4": GOAL_COST},
        "profile_ceiling_at_40pct_cost": profile_ceiling(table, settings),
        "dataset_label_ceiling_at_40pct_cost": dataset_ceiling(table),
        "rows": rows,
    }
    return result


def run_curves(
    quick: bool,
    data: Path,
    settings: Settings,
    policies: list[str],
    routellm_limit: int,
    sweep: tuple[float, ...] = SWEEP,
    seed_count: int = 3,
) -> dict[str, Any]:
    """Section 4: per table and policy, the curve over the sweep against the two-model hull."""
    seeds = [1] if quick else list(range(1, seed_count + 1))
    table_path = data / "outcomes" / "outcomes.csv"
    latency_path = data / "latency" / "llmperf_requests.csv"
    latency = load_latency(latency_path) if latency_path.is_file() else None
    out: dict[str, Any] = {"seeds": seeds, "sweep": list(sweep), "tables": []}
    for source, limit, names in (
        ("routerbench", 1_200 if quick else None, policies),
        ("routellm", min(routellm_limit, 1_200) if quick else routellm_limit, _routellm_policies(policies)),
    ):
        table = impute_costs(load_outcomes(table_path, source=source))
        entry: dict[str, Any] = {
            "source": source,
            "prompts": min(limit or len(table), len(table)),
            "models": len(table.models),
            "costs": "list prices (LIST_PRICES)" if source == "routellm" else "the table's own",
            "rows": [],
        }
        entry["summary"] = {}
        for policy in names:
            rows = curve(table, latency, policy, seeds, limit, settings, sweep)
            entry["rows"] += rows
            entry["summary"][policy] = curve_summary(rows)
            print(f"  {source} {policy}: curve done", file=sys.stderr)
        out["tables"].append(entry)
    return out


def _routellm_policies(policies: list[str]) -> list[str]:
    """The first policy, and its shadow-exploring form when asked for: the second table's runs."""
    return [p for p in policies if p.partition("+")[0] == policies[0].partition("+")[0]]


def print_curves(result: dict[str, Any]) -> None:
    cv = result["curves"]
    print(
        f"\n4. the router's curve against the best mix of two fixed models at the same cost (weights: "
        f"latency 0, cost 1-q, quality q); mean of seeds {cv['seeds']} (worst)"
    )
    print(
        f"{'table':<12} {'policy':<10} {'q':>5} {'quality vs ref':>18} {'cost vs ref':>16} "
        f"{'hull at that cost':>18} {'points over hull':>20} {'per-cell oracle':>24} {'full info':>10}"
    )
    for table in cv["tables"]:
        for r in table["rows"]:
            print(
                f"{table['source']:<12} {r['policy']:<10} {r['quality_weight']:>5.2f} "
                f"{r['quality_vs_ref']:>9.1%} ({r['quality_vs_ref_worst']:.1%}) "
                f"{r['cost_vs_ref']:>7.1%} ({r['cost_vs_ref_worst']:.1%}) "
                f"{r['hull_quality_vs_ref']:>18.1%} "
                f"{r['points_over_hull']:>+10.2f} ({r['points_over_hull_worst']:+.2f}) "
                f"{r['cell_oracle']['quality_vs_ref']:>7.1%} @ {r['cell_oracle']['cost_vs_ref']:.1%} "
                f"{r['cell_oracle']['points_over_hull']:+.2f} "
                f"{r['full_information_online']['points_over_hull']:>+10.2f}"
            )
        for policy, sm in table.get("summary", {}).items():
            best = sm["best_within_40pct_cost"]
            goal = (
                f"{best['quality_vs_ref']:.1%} (worst seed {best['quality_vs_ref_worst']:.1%}) at "
                f"{best['cost_vs_ref']:.1%} cost, q={best['quality_weight']}"
                if best["quality_weight"] is not None
                else "no sweep point within 40% cost"
            )
            print(
                f"{table['source']} {policy}: {sm['points_over_hull_mean']:+.2f} points over the hull on "
                f"average over the sweep (worst seed {sm['points_over_hull_worst_seed_mean']:+.2f}), lowest "
                f"point {sm['points_over_hull_lowest']:+.2f} (worst seed "
                f"{sm['points_over_hull_worst_seed_lowest']:+.2f}); best within 40% cost: {goal}; "
                f"shadows on {sm.get('shadow_share_mean', 0.0):.1%} of the answers (their cost counted); "
                f"goals met: {sm['goals_met']}; the per-cell oracle: "
                f"{sm['cell_oracle_points_over_hull_mean']:+.2f} on average, lowest "
                f"{sm['cell_oracle_points_over_hull_lowest']:+.2f}; learning per cell seeing every "
                f"model's answer: {sm['full_information_online_points_over_hull_mean']:+.2f} on average"
            )


def _mean(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in runs[0]:
        values = [r[key] for r in runs]
        if any(v is None for v in values):
            out[key] = None  # never reached in at least one seed
            out[f"{key}_per_seed"] = values
        else:
            out[key] = float(np.mean(values))
    return out


def _fmt(value: Any, spec: str) -> str:
    return "never" if value is None else format(value, spec)


def print_tables(result: dict[str, Any]) -> None:
    sim = result["simulation"]
    print(
        f"\n1. regret after {sim['requests']} requests (lab world, default weights; mean of seeds "
        f"{result['seeds']})"
    )
    print(f"{'policy':<10} {'regret':>9} {'per req, last 1/5':>18} {'best share, last 1/5':>21}")
    for r in sim["rows"]:
        print(
            f"{r['policy']:<10} {r['regret']:>9.1f} {r['regret_last_fifth_per_request']:>18.4f} "
            f"{r['best_share_last_fifth']:>21.1%}"
        )
    ad = result["adaptation"]
    print(
        f"\n2. the best model in speed mode slows down 5x at request {ad['slow_at']}, recovers at "
        f"{ad['recover_at']} (speed mode; mean of seeds)"
    )
    print(
        f"{'policy':<10} {'share before':>13} {'explored':>9} {'requests to move 80% off':>25} "
        f"{'picks in first 50':>18} {'share while slow':>17} {'requests to regain half':>24}"
    )
    for r in ad["rows"]:
        print(
            f"{r['policy']:<10} {r['share_before']:>13.1%} {r['explored_share_stationary']:>9.1%} "
            f"{_fmt(r['requests_to_move_80pct_off'], '.1f'):>25} "
            f"{r['slowed_model_picks_in_first_50']:>18.1f} {r['share_while_slow']:>17.1%} "
            f"{_fmt(r['requests_to_regain_half'], '.1f'):>24}"
        )
    rb = result["routerbench"]
    if "skipped" in rb:
        print(f"\n3. RouterBench skipped: {rb['skipped']}")
        return
    print(
        f"\n3. RouterBench, {rb['prompts']} prompts, one shuffled pass, learned online; relative to "
        f"{REFERENCE} (accuracy {rb['reference_quality']:.3f}); goal >= 95% quality at <= 40% cost"
    )
    print(f"{'policy':<10} {'setting':<42} {'quality':>8} {'cost':>7}  goal")
    for r in rb["rows"]:
        print(
            f"{r['policy']:<10} {r['setting']:<42} {r['quality_vs_gpt4']:>8.1%} {r['cost_vs_gpt4']:>7.1%}  "
            f"{'met' if r['goal_met'] else 'not met'}"
        )
    ceiling, labels = rb["profile_ceiling_at_40pct_cost"], rb["dataset_label_ceiling_at_40pct_cost"]
    print(
        f"profile ceiling at <= 40% cost (cells {result['profile']}: {ceiling['cell_counts']}, truth "
        f"known): one model per cell {ceiling['pure_quality_vs_gpt4']:.1%} quality "
        f"({ceiling['pure_assignment']}); mixing two assignments {ceiling['mixed_quality_vs_gpt4']:.1%}"
    )
    print(
        f"dataset-label ceiling (a perfect profiler): one model per dataset "
        f"{labels['pure_quality_vs_gpt4']:.1%} ({labels['pure_assignment']}); "
        f"mixing {labels['mixed_quality_vs_gpt4']:.1%}"
    )
    best = max(rb["rows"], key=lambda r: r["quality_vs_gpt4"] if r["cost_vs_gpt4"] <= GOAL_COST else -1)
    print(
        f"best online result within 40% cost: {best['policy']}, {best['setting']}: "
        f"{best['quality_vs_gpt4']:.1%} quality at {best['cost_vs_gpt4']:.1%} cost"
    )


def _settings(cells: str | None, buckets: str | None, bits: int | None = None) -> Settings:
    """``Settings()`` with the profile's cells, length buckets and semantic bits replaced when given."""
    changes: dict[str, Any] = {}
    if bits is not None:
        changes["semantic_bits"] = bits
    if cells is not None:
        changes["cells"] = cells
    if buckets is not None:
        changes["length_buckets"] = [int(b) for b in buckets.split(",")]
    profile = ProfileSettings(**{**Settings().profile.model_dump(), **changes})
    return Settings(profile=profile)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests and seeds (a smoke run)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument(
        "--cells",
        choices=["task", "task_and_length", "task_and_semantic"],
        help="default: the settings default",
    )
    parser.add_argument("--length-buckets", help="comma-separated token edges, e.g. 128,512,2048")
    parser.add_argument("--semantic-bits", type=int, help="with --cells task_and_semantic")
    parser.add_argument("--ucb-c", type=float, help="exploration.ucb_c (default: the settings default)")
    parser.add_argument("--curves-only", action="store_true", help="only part 4, the curves against the hull")
    parser.add_argument(
        "--policies",
        default=",".join([*POLICIES, "ucb+shadow"]),
        help="part 4: comma-separated policies; NAME+shadow explores by shadow (evaluation.shadow.explore)",
    )
    parser.add_argument(
        "--sweep", default=",".join(map(str, SWEEP)), help="part 4: quality weights, cost-leaning first"
    )
    parser.add_argument(
        "--cell-difficulty",
        choices=["on", "off"],
        help="learning.cell_difficulty (default: the settings default)",
    )
    parser.add_argument("--seeds", type=int, default=3, help="part 4: seeds 1..N (default 3)")
    parser.add_argument(
        "--cost-norm", choices=["linear", "log"], help="routing.cost_norm (default: the settings default)"
    )
    parser.add_argument(
        "--routellm-limit", type=int, default=5_000, help="part 4: prompts of the routellm table"
    )
    parser.add_argument(
        "--service-only", action="store_true", help="only part 5, adaptation through the real service"
    )
    args = parser.parse_args()
    if args.service_only:
        return service_main(args.quick, args.output.with_name("learning_service.json"))
    started = time.perf_counter()
    settings = _settings(args.cells, args.length_buckets, args.semantic_bits)
    if args.ucb_c is not None:
        settings = settings.model_copy(
            update={"exploration": settings.exploration.model_copy(update={"ucb_c": args.ucb_c})}
        )
    if args.cell_difficulty is not None:
        settings = settings.model_copy(
            update={
                "learning": settings.learning.model_copy(
                    update={"cell_difficulty": args.cell_difficulty == "on"}
                )
            }
        )
    if args.cost_norm is not None:
        settings = settings.model_copy(
            update={"routing": settings.routing.model_copy(update={"cost_norm": args.cost_norm})}
        )
    if args.curves_only:
        result: dict[str, Any] = {"benchmark": "learning", "quick": args.quick, "machine": machine()}
        result["profile"] = settings.profile.model_dump(include={"cells", "semantic_bits"})
        result["exploration"] = settings.exploration.model_dump(include={"policy", "ucb_c"})
        result["cell_prior_strength"] = settings.learning.cell_prior_strength
        result["cell_difficulty"] = settings.learning.cell_difficulty
        result["cost"] = settings.routing.model_dump(include={"cost_norm", "cost_reference_usd"})
    else:
        result = run_all(args.quick, args.data, settings)
    sweep = tuple(float(q) for q in args.sweep.split(","))
    result["curves"] = run_curves(
        args.quick, args.data, settings, args.policies.split(","), args.routellm_limit, sweep, args.seeds
    )
    result["seconds"] = round(time.perf_counter() - started, 1)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    if not args.curves_only:
        print_tables(result)
    print_curves(result)
    print(f"\nwritten to {args.output} in {result['seconds']} s")
    return 0


def service_main(quick: bool, output: Path) -> int:
    """Part 5: adaptation through HTTP (``_service_adaptation``), per endpoint speed and policy."""
    from _service_adaptation import service_adaptation

    started = time.perf_counter()
    seeds = [1] if quick else [1, 2, 3]
    rows = service_adaptation(["ucb", "thompson", "softmax", "greedy"], seeds, quick)
    result: dict[str, Any] = {
        "benchmark": "learning_service",
        "machine": machine(),
        "seeds": seeds,
        "rows": rows,
    }
    result["seconds"] = round(time.perf_counter() - started, 1)
    output.write_text(json.dumps(result, indent=2) + "\n")
    print("\n5. through the real service: four models on one endpoint, the fastest slows 5x and recovers")
    print(
        f"{'endpoint':<28} {'policy':<9} {'share before':>12} {'explored':>9} {'to move 80% off':>16} "
        f"{'share while slow':>17} {'to regain half':>15}"
    )
    for row in rows:
        runs = row["runs"]
        move = [r["requests_to_move_80pct_off"] for r in runs]
        regain = [r["requests_to_regain_half"] for r in runs]
        print(
            f"{row['endpoint']:<28} {row['policy']:<9} {np.mean([r['share_before'] for r in runs]):>12.1%} "
            f"{np.mean([r['explored_share'] for r in runs]):>9.1%} {_worst(move):>16} "
            f"{np.mean([r['share_while_slow'] for r in runs]):>17.1%} {_worst(regain):>15}"
        )
    print(f"(worst of {len(seeds)} seeds; 'never': not within the run)")
    print(f"written to {output} in {result['seconds']} s")
    return 0


def _worst(values: list[int | None]) -> str:
    return "never" if any(v is None for v in values) else str(max(v for v in values if v is not None))


if __name__ == "__main__":
    raise SystemExit(main())
