"""Decision cost in CPU instructions (valgrind's callgrind): a figure a busy machine does not move.

    python3 benchmarks/decision_instructions.py                  # 300 models, ucb (a few minutes)
    python3 benchmarks/decision_instructions.py --models 64 --iterations 200

Wall-clock timings on a shared two-core machine move by half from run to run; the number of
instructions a step executes does not (repeat runs agree within 0.1%). Each step below runs the
same seeded program twice under callgrind, with 0 and with N repetitions of the step after an
identical set-up (the router built and warmed with 200 decisions and their outcomes); the
difference divided by N is the step's instructions:

- ``floor``: the published design's score in NumPy over the same number of models (latency and
  cost min-max normalised, weighted sum with quality, argmax), as in ``decision_latency.py``;
- ``decide``: ``Router.decide`` on the benchmark's 64 prompts in turn;
- ``decide + record``: each decision followed by ``record`` of a seeded answer, as the service
  does.

The ratio of ``decide + record`` to the floor is issue 10's goal read in instructions (the goal
itself is in time: instructions are not time, but on one machine and one interpreter the two
move together for this kind of code). Needs ``valgrind`` (``apt-get install valgrind``). Writes
``benchmarks/results/decision_instructions.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "decision_instructions.json"
STEPS = ("floor", "decide", "decide + record")
_COLLECTED = re.compile(r"Collected : (\d+)")


def inner(step: str, repeats: int, models: int, policy: str) -> None:
    """The measured program: set up, then ``repeats`` of ``step`` (none for the baseline run)."""
    import numpy as np

    from adaptive_router import load_settings
    from adaptive_router._bench import sample_requests, synthetic_catalogue
    from adaptive_router.core import Outcome, Router
    from adaptive_router.simulator import SimClock

    rng = np.random.default_rng(7)
    latency = np.exp(rng.normal(0.0, 0.3, 200 + repeats)).tolist()
    tokens = rng.integers(20, 400, 200 + repeats).tolist()
    requests = sample_requests()
    # A simulated clock, 5 ms a request: under callgrind the program runs ~50x slower, and the
    # learner's time-driven refreshes must come as often per request as in the service.
    # Built here as _bench.router_for does (seed 0, no decision cache), so that the script also
    # runs against older commits of the package for a before/after.
    clock = SimClock()
    base = load_settings()
    settings = base.model_copy(
        update={
            "exploration": base.exploration.model_copy(update={"seed": 0, "policy": policy}),
            "cache": base.cache.model_copy(update={"decision_ttl_seconds": 0.0}),
        }
    )
    router = Router.from_settings(settings, synthetic_catalogue(models, seed=0), clock=clock)
    for i in range(200):
        clock.advance(0.005)
        d = router.decide(requests[i % len(requests)])
        router.record(
            d, Outcome(model=d.model, success=True, latency_s=latency[i], completion_tokens=tokens[i])
        )
    floor = np.random.default_rng(0)
    lat, cost, quality = (
        floor.uniform(0.2, 5.0, models),
        floor.uniform(1e-6, 1e-2, models),
        floor.uniform(0, 1, models),
    )
    if step == "floor":
        for _ in range(repeats):
            a = (lat - lat.min()) / (lat.max() - lat.min())
            c = (cost - cost.min()) / (cost.max() - cost.min())
            int((0.4 * (1 - a) + 0.3 * (1 - c) + 0.3 * quality).argmax())
    elif step == "decide":
        for i in range(repeats):
            clock.advance(0.005)
            router.decide(requests[i % len(requests)])
    else:
        for i in range(repeats):
            clock.advance(0.005)
            d = router.decide(requests[i % len(requests)])
            j = 200 + i
            router.record(
                d, Outcome(model=d.model, success=True, latency_s=latency[j], completion_tokens=tokens[j])
            )


def instructions(step: str, repeats: int, models: int, policy: str) -> int:
    """Instructions callgrind counted for the whole program with ``repeats`` of ``step``."""
    command = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        __file__,
        "--inner",
        step,
        str(repeats),
        str(models),
        policy,
    ]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=3600, check=False)
    found = _COLLECTED.search(done.stderr)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"callgrind failed for {step!r}:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=300)
    parser.add_argument("--policy", default="ucb")
    parser.add_argument("--iterations", type=int, default=300, help="repetitions of each step")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--inner", nargs=4, metavar=("STEP", "N", "MODELS", "POLICY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        step, n, models, policy = args.inner
        inner(step, int(n), int(models), policy)
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    rows = []
    for step in STEPS:
        base = instructions(step, 0, args.models, args.policy)
        full = instructions(step, args.iterations, args.models, args.policy)
        rows.append({"step": step, "instructions": round((full - base) / args.iterations)})
        print(f"  {step}: done", file=sys.stderr)
    floor = rows[0]["instructions"]
    for row in rows:
        row["x_floor"] = round(row["instructions"] / floor, 2)
    result = {
        "benchmark": "decision_instructions",
        "models": args.models,
        "policy": args.policy,
        "iterations": args.iterations,
        "python": sys.version.split()[0],
        "rows": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'step':<18} {'instructions':>14} {'x floor':>9}   ({args.models} models, {args.policy})")
    for row in rows:
        print(f"{row['step']:<18} {row['instructions']:>14,} {row['x_floor']:>9.1f}")
    print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
