"""Learning: regret, adaptation to a slow-down, and RouterBench learned online, per policy.

    python3 benchmarks/learning.py            # full run (about a minute)
    python3 benchmarks/learning.py --quick    # a smoke run (about 15 seconds)
    python3 benchmarks/learning.py --data ../shared/data

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
   ceiling" is the best any router can do that picks one model per task class of the default
   profiler (best pure assignment under the cost cap, knowing the truth): learning per task
   class cannot beat it.

Writes benchmarks/results/learning.json and prints one table per part.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from adaptive_router.catalogue import Catalogue, Model
from adaptive_router.replay import (
    LatencyGroups,
    OutcomeTable,
    curve_weights,
    load_latency,
    load_outcomes,
    outcome_catalogue,
    replay_outcomes,
)
from adaptive_router.router import Router, RouteRequest
from adaptive_router.settings import Settings, load_settings
from adaptive_router.simulate import SimClock, World, run

POLICIES = ["ucb", "thompson", "softmax", "greedy"]
RESULTS = Path(__file__).resolve().parent / "results" / "learning.json"
DEFAULT_DATA = Path(
    os.environ.get("ADAPTIVE_ROUTER_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)
REFERENCE = "gpt-4-1106-preview"
GOAL_QUALITY, GOAL_COST = 0.95, 0.40

IDS = [f"lab/m{i}" for i in range(6)]
TRUTH = {
    "ttft_s": [0.3, 0.5, 0.4, 0.8, 0.35, 0.6],
    "tpot_s": [0.015, 0.02, 0.012, 0.03, 0.025, 0.01],
    "quality": [0.55, 0.7, 0.8, 0.75, 0.6, 0.65],
}
PROMPT = RouteRequest(prompt="Tell me about the sea.", max_tokens=200)


def lab(policy: str, seed: int) -> tuple[Router, SimClock, World]:
    models = [
        Model(
            id=i,
            price_prompt=1e-6,
            price_completion=2e-6,
            context_length=32_000,
            ttft_s=0.5,
            tpot_s=0.02,
            quality=0.6,
        )
        for i in IDS
    ]
    clock = SimClock()
    settings = load_settings(exploration={"policy": policy, "seed": seed})
    return (
        Router.from_settings(settings, Catalogue(models), clock=clock),
        clock,
        World.from_arrays(IDS, TRUTH["ttft_s"], TRUTH["tpot_s"], TRUTH["quality"]),
    )


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
    """Slow down whichever model carries the traffic at ``slow_at``; restore it at ``recover_at``."""
    router, clock, world = lab(policy, seed)
    before = run(router, world, slow_at, clock, mode="speed", seed=seed)
    leader = max(IDS, key=lambda m: before.share(m, slow_at - 200))
    world.slow_down(leader, 5.0)
    slow = run(router, world, recover_at - slow_at, clock, mode="speed", seed=seed + 1_000)
    world.slow_down(leader, 0.2)
    after = run(router, world, requests - recover_at, clock, mode="speed", seed=seed + 2_000)
    return {
        "share_before": before.share(leader, slow_at - 200),
        "requests_to_move_80pct_off": _first(slow.chosen, leader, lambda share: share <= 0.2),
        "slowed_model_picks_in_first_50": sum(1 for m in slow.chosen[:50] if m == leader),
        "share_while_slow": slow.share(leader, 100),
        "requests_to_regain_half": _first(after.chosen, leader, lambda share: share >= 0.5),
        "share_after_recovery": after.share(leader, 200),
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
) -> list[dict[str, Any]]:
    rows = []
    for label, mode, weights in settings_grid(quick):
        runs = [
            replay_outcomes(
                table, None, Settings(), policy, mode, seed, True, limit, latency, weights=weights
            )
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


def profile_ceiling(table: OutcomeTable, cost_cap: float = GOAL_COST) -> dict[str, Any]:
    """The best quality within ``cost_cap`` (relative to the reference) of any router that picks
    by the default profiler's task class, knowing the truth: one model per class ("pure"), or a
    mix of two such assignments ("mixed", the upper envelope at the cap)."""
    router = Router.from_settings(Settings(), outcome_catalogue(table))
    tasks = np.array([router.profile(RouteRequest(prompt=t)).task_index for t in table.texts])
    ref = table.models.index(REFERENCE)
    present = sorted(set(tasks.tolist()))
    q_task = np.array([table.quality[tasks == t].sum(axis=0) for t in present])
    q_task /= len(table) * table.quality[:, ref].mean()
    c_task = np.array([table.cost[tasks == t].sum(axis=0) for t in present]) / table.cost[:, ref].sum()
    combos = np.array(list(itertools.product(range(len(table.models)), repeat=len(present))))
    rows = np.arange(len(present))
    q, c = q_task[rows, combos].sum(axis=1), c_task[rows, combos].sum(axis=1)
    under, over = c <= cost_cap, c >= cost_cap
    qa, ca = q[under][:, None], c[under][:, None]
    qb, cb = q[over][None, :], c[over][None, :]
    mixed = np.where(cb > ca, qa + (cost_cap - ca) / np.maximum(cb - ca, 1e-12) * (qb - qa), qa)
    best = int(np.flatnonzero(under)[q[under].argmax()])
    return {
        "pure_quality_vs_gpt4": float(q[best]),
        "pure_cost_vs_gpt4": float(c[best]),
        "pure_assignment": {
            router.profiler.tasks[t]: table.models[m] for t, m in zip(present, combos[best], strict=True)
        },
        "mixed_quality_vs_gpt4": float(mixed.max()),
        "task_counts": {router.profiler.tasks[t]: int((tasks == t).sum()) for t in present},
    }


# --- running and printing ---------------------------------------------------------------------


def machine() -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def run_all(quick: bool, data: Path) -> dict[str, Any]:
    seeds = [1] if quick else [1, 2, 3]
    n = 1_000 if quick else 3_000
    slow_at, recover_at, total = (400, 800, 1_200) if quick else (1_000, 2_000, 3_000)
    result: dict[str, Any] = {"benchmark": "learning", "quick": quick, "machine": machine(), "seeds": seeds}
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
        rows += routerbench(table, latency, policy, seeds, limit, quick)
        print(f"  {policy}: routerbench done", file=sys.stderr)
    ref = table.models.index(REFERENCE)
    result["routerbench"] = {
        "prompts": limit or len(table),
        "dropped_incomplete": table.dropped,
        "reference": REFERENCE,
        "reference_quality": float(table.quality[:, ref].mean()),
        "goal": {"quality_vs_gpt4": GOAL_QUALITY, "cost_vs_gpt4": GOAL_COST},
        "profile_ceiling_at_40pct_cost": profile_ceiling(table),
        "rows": rows,
    }
    return result


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
        f"\n2. the leading model slows down 5x at request {ad['slow_at']}, recovers at "
        f"{ad['recover_at']} (speed mode)"
    )
    print(
        f"{'policy':<10} {'share before':>13} {'requests to move 80% off':>25} {'picks in first 50':>18} "
        f"{'share while slow':>17} {'requests to regain half':>24}"
    )
    for r in ad["rows"]:
        print(
            f"{r['policy']:<10} {r['share_before']:>13.1%} "
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
    ceiling = rb["profile_ceiling_at_40pct_cost"]
    print(
        f"profile ceiling at <= 40% cost (by default task class {ceiling['task_counts']}, truth known): "
        f"one model per class {ceiling['pure_quality_vs_gpt4']:.1%} quality ({ceiling['pure_assignment']}); "
        f"mixing two assignments {ceiling['mixed_quality_vs_gpt4']:.1%}"
    )
    best = max(rb["rows"], key=lambda r: r["quality_vs_gpt4"] if r["cost_vs_gpt4"] <= GOAL_COST else -1)
    print(
        f"best online result within 40% cost: {best['policy']}, {best['setting']}: "
        f"{best['quality_vs_gpt4']:.1%} quality at {best['cost_vs_gpt4']:.1%} cost"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests and seeds (a smoke run)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    started = time.perf_counter()
    result = run_all(args.quick, args.data)
    result["seconds"] = round(time.perf_counter() - started, 1)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print_tables(result)
    print(f"\nwritten to {args.output} in {result['seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
