"""Decision time in-process: p50/p99 per request by catalogue size and exploration policy.

    python3 benchmarks/decision_latency.py            # full run (~1-2 minutes)
    python3 benchmarks/decision_latency.py --quick    # a few seconds, fewer iterations

Each sample is what the service does for one request before and after the network: ``decide``
(profile the prompt, build the constraint masks, score, explore, rank the fallback chain) and
then ``record`` of the answer, so the next decision reads estimates an outcome just changed.
Beside each size, measured in the same run: the *floor*, the published design's own score in
NumPy over the same number of models (min-max normalise latency and cost, weighted sum with
quality, argmax; no profile, constraints, learning or exploration), and each policy's ratio to
it; ``decide alone`` (no record) for ucb; and the same greedy score in a plain Python loop.
Writes benchmarks/results/decision_latency.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from adaptive_router import load_settings
from adaptive_router._bench import (
    machine_info,
    router_for,
    sample_requests,
    time_decisions,
    time_floor,
    time_python_loop,
)

SIZES = [10, 100, 300, 1_000, 10_000]
POLICIES = ["greedy", "ucb", "thompson", "softmax"]
GOAL_RATIO = {300: (2.0, 3.0)}  # models: (p50, p99) of decide + record, as multiples of the floor
RESULTS = Path(__file__).resolve().parent / "results" / "decision_latency.json"


def machine() -> dict[str, object]:
    return machine_info(("numpy",))


def goal_met(models: int, p50_ratio: float, p99_ratio: float) -> str:
    goal = GOAL_RATIO.get(models)
    if goal is None:
        return ""
    ok = p50_ratio <= goal[0] and p99_ratio <= goal[1]
    return f"p50<={goal[0]:g}x, p99<={goal[1]:g}x the floor: {'met' if ok else 'NOT met'}"


def run(quick: bool) -> list[dict[str, object]]:
    settings = load_settings()
    requests = sample_requests()
    rows: list[dict[str, object]] = []
    for models in SIZES:
        iterations = (2_000 if quick else 20_000) if models < 10_000 else (500 if quick else 5_000)
        floor = time_floor(models, iterations)
        rows.append({"models": models, "policy": "floor (published score)", **floor.as_dict(), "goal": ""})
        for policy in POLICIES:
            timing = time_decisions(router_for(settings, models, policy), requests, iterations)
            p50_ratio, p99_ratio = timing.p50_us / floor.p50_us, timing.p99_us / floor.p99_us
            rows.append(
                {
                    "models": models,
                    "policy": f"{policy} decide+record",
                    **timing.as_dict(),
                    "p50_x_floor": round(p50_ratio, 2),
                    "p99_x_floor": round(p99_ratio, 2),
                    "goal": goal_met(models, p50_ratio, p99_ratio),
                }
            )
        alone = time_decisions(router_for(settings, models, "ucb"), requests, iterations, record=False)
        rows.append({"models": models, "policy": "ucb decide alone", **alone.as_dict(), "goal": ""})
        loop_iterations = max(50, iterations // (20 if models >= 1_000 else 5))
        timing = time_python_loop(router_for(settings, models, "greedy"), requests, loop_iterations)
        rows.append({"models": models, "policy": "python-loop baseline", **timing.as_dict(), "goal": ""})
        print(f"  {models:>6} models done", file=sys.stderr)
    return rows


def print_table(rows: list[dict[str, object]]) -> None:
    header = f"{'models':>7} {'policy':<26} {'p50 us':>9} {'p99 us':>9} {'x floor':>13} {'per s':>9}  goal"
    print(header)
    print("-" * len(header))
    for r in rows:
        ratio = f"{r['p50_x_floor']:.1f} / {r['p99_x_floor']:.1f}" if "p50_x_floor" in r else ""
        print(
            f"{r['models']:>7} {r['policy']!s:<26} {r['p50_us']:>9.1f} {r['p99_us']:>9.1f} {ratio:>13} "
            f"{r['per_second']:>9,.0f}  {r['goal']}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations (a smoke run)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    rows = run(args.quick)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps(
            {"benchmark": "decision_latency", "quick": args.quick, "machine": machine(), "rows": rows},
            indent=2,
        )
        + "\n"
    )
    print_table(rows)
    print(f"\nwritten to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
