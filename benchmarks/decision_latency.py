"""Decision time in-process: p50/p99 per decision by catalogue size and exploration policy.

    python3 benchmarks/decision_latency.py            # full run (~1-2 minutes)
    python3 benchmarks/decision_latency.py --quick    # a few seconds, fewer iterations

Each decision is the whole path a request takes before any network: profile the prompt, build
the constraint masks (context, capabilities, latency quantile, cost bound), score, explore,
rank the fallback chain. The baseline is the same greedy score and masks in a plain Python loop.
Writes benchmarks/results/decision_latency.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from adaptive_router import load_settings
from adaptive_router._bench import machine_info, router_for, sample_requests, time_decisions, time_python_loop

SIZES = [10, 100, 300, 1_000, 10_000]
POLICIES = ["greedy", "ucb", "thompson", "softmax"]
GOALS = {300: (25.0, 50.0), 10_000: (None, 250.0)}  # models: (p50 us, p99 us)
RESULTS = Path(__file__).resolve().parent / "results" / "decision_latency.json"


def machine() -> dict[str, object]:
    return machine_info(("numpy",))


def goal_met(models: int, p50: float, p99: float) -> str:
    goal = GOALS.get(models)
    if goal is None:
        return ""
    p50_goal, p99_goal = goal
    ok = (p50_goal is None or p50 <= p50_goal) and p99 <= p99_goal
    text = " ".join(f"{name}<={value:g}" for name, value in (("p50", p50_goal), ("p99", p99_goal)) if value)
    return f"{text}: {'met' if ok else 'NOT met'}"


def run(quick: bool) -> list[dict[str, object]]:
    settings = load_settings()
    requests = sample_requests()
    rows: list[dict[str, object]] = []
    for models in SIZES:
        iterations = (2_000 if quick else 20_000) if models < 10_000 else (500 if quick else 5_000)
        for policy in POLICIES:
            timing = time_decisions(router_for(settings, models, policy), requests, iterations)
            rows.append(
                {
                    "models": models,
                    "policy": policy,
                    **timing.as_dict(),
                    "goal": goal_met(models, timing.p50_us, timing.p99_us),
                }
            )
        loop_iterations = max(50, iterations // (20 if models >= 1_000 else 5))
        timing = time_python_loop(router_for(settings, models, "greedy"), requests, loop_iterations)
        rows.append({"models": models, "policy": "python-loop baseline", **timing.as_dict(), "goal": ""})
        print(f"  {models:>6} models done", file=sys.stderr)
    return rows


def print_table(rows: list[dict[str, object]]) -> None:
    header = f"{'models':>7} {'policy':<22} {'p50 us':>9} {'p99 us':>9} {'decisions/s':>12}  goal"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['models']:>7} {r['policy']!s:<22} {r['p50_us']:>9.1f} {r['p99_us']:>9.1f} "
            f"{r['per_second']:>12,.0f}  {r['goal']}"
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
