"""Reliability scenarios for budgets and shutdown (issue 13, items 2 and 4), run by reliability.py.

- burst: Redis, the simulated upstream and two router replicas (uvicorn processes) sharing a
  per-key daily cap of five worst cases; 100 requests sent at once, half to each replica. The
  overshoot is what the answers cost (their usage at catalogue prices) beyond the cap, in worst
  cases (a request's prompt estimate plus its ``max_tokens``, at the model's prices).
- sigterm: one ``adaptive-router serve`` process with ``server.shutdown_grace_s`` and a learned
  state path; streams trickling a token every 200 ms (~40 s each) are open when SIGTERM comes.
  Reported: how long the process took to exit, its exit code, how each stream ended, and
  whether the learned state was written on the way out.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from tests.process_fixtures import Catalogue, ProcessGroup, router_env, scenario, start_redis, wait_for

__all__ = ["print_table", "run"]

KEY = "bench-tenant"
PROMPT_PRICE, COMPLETION_PRICE = 1e-6, 2e-6  # the process fixtures' catalogue, USD per token
BURST, MAX_TOKENS, PROMPT = 100, 20, "Say hi."
PROMPT_TOKENS = 2  # 7 characters at four a token, as both the router and the simulator count
CAP_IN_WORST_CASES = 5
GRACE_S, STREAMS = 5.0, 8


def run(work: Path) -> dict[str, Any]:
    """Both scenarios; each in its own processes, stopped at the end."""
    return {"burst": budget_burst(work / "burst"), "sigterm": sigterm_with_streams(work / "sigterm")}


# --- a burst against a shared cap ----------------------------------------------------------------


def budget_burst(work: Path) -> dict[str, Any]:
    work.mkdir(parents=True)
    worst = PROMPT_TOKENS * PROMPT_PRICE + MAX_TOKENS * COMPLETION_PRICE
    cap = CAP_IN_WORST_CASES * worst
    catalogue = Catalogue.write(work)
    redis = start_redis(work)
    try:
        with ProcessGroup(work) as group:
            sim = group.simulator(catalogue, _slow_start())
            replicas = [
                group.router(name, sim, _budget_env(catalogue, name, redis.url, cap)) for name in ("a", "b")
            ]
            started = time.monotonic()
            answers = asyncio.run(_burst([r.url for r in replicas]))
            seconds = time.monotonic() - started
    finally:
        redis.stop()
    ok = [a for a in answers if a[0] == 200]
    spent = sum(_cost(a[1]) for a in ok)
    logs = "".join((work / f"{name}.log").read_text(errors="replace") for name in ("a", "b"))
    return {
        "requests": BURST,
        "replicas": 2,
        "cap_usd": cap,
        "worst_case_usd": worst,
        "answered": len(ok),
        "refused_429": sum(1 for a in answers if a[0] == 429),
        "other": sorted({a[0] for a in answers} - {200, 429}),
        "spent_usd": spent,
        "overshoot_usd": max(0.0, spent - cap),
        "overshoot_worst_cases": max(0.0, spent - cap) / worst,
        "without_holds_usd": BURST * (spent / len(ok)) if ok else 0.0,  # every request served
        "budget_redis_faults": logs.count("budget: Redis unavailable"),  # counted locally meanwhile
        "latency_p50_ms": statistics.median(a[2] for a in answers) * 1000,
        "seconds": seconds,
    }


def _slow_start() -> dict[str, Any]:
    """Answers of 40 tokens (20 with max_tokens) after ~300 ms: the whole burst is in flight at once."""
    steady = {"ttft_s": 0.3, "tpot_s": 1e-4, "ttft_sigma": 0.0, "tpot_sigma": 0.0, "tail_prob": 0.0}
    return scenario(models={"*": steady}, output_tokens_median=40)


def _budget_env(catalogue: Catalogue, name: str, redis_url: str, cap: float) -> dict[str, str]:
    return router_env(
        catalogue,
        LEARNING__REPLICA_ID=name,
        REDIS__URL=redis_url,
        REDIS__PREFIX="reliability-budget",
        SERVER__API_KEYS=[KEY],
        BUDGET__PER_KEY_DAILY_USD=str(cap),
    )


async def _burst(urls: list[str]) -> list[tuple[int, dict[str, Any], float]]:
    body = {"model": "auto", "max_tokens": MAX_TOKENS, "messages": [{"role": "user", "content": PROMPT}]}
    headers = {"authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(
        timeout=30.0, headers=headers, limits=httpx.Limits(max_connections=256)
    ) as client:

        async def one(i: int) -> tuple[int, dict[str, Any], float]:
            started = time.monotonic()
            response = await client.post(urls[i % len(urls)] + "/v1/chat/completions", json=body)
            return response.status_code, response.json(), time.monotonic() - started

        return await asyncio.gather(*(one(i) for i in range(BURST)))


def _cost(answer: dict[str, Any]) -> float:
    usage = answer["usage"]
    return float(usage["prompt_tokens"] * PROMPT_PRICE + usage["completion_tokens"] * COMPLETION_PRICE)


# --- SIGTERM with streams open -------------------------------------------------------------------


def sigterm_with_streams(work: Path) -> dict[str, Any]:
    work.mkdir(parents=True)
    catalogue = Catalogue.write(work)
    trickle = {"*": {"ttft_s": 0.01, "tpot_s": 0.2, "ttft_sigma": 0.0, "tpot_sigma": 0.0, "tail_prob": 0.0}}
    state = work / "learned.npz"
    with ProcessGroup(work) as group:
        sim = group.simulator(catalogue, scenario(models=trickle, output_tokens_median=200))
        env = router_env(catalogue, SERVER__SHUTDOWN_GRACE_S=str(GRACE_S), LEARNING__STATE_PATH=str(state))
        router = group.serve("router", sim, env)
        sinks: list[list[Any]] = [[] for _ in range(STREAMS)]
        threads = [threading.Thread(target=_stream_into, args=(router.url, s), daemon=True) for s in sinks]
        for thread in threads:
            thread.start()
        trickling = wait_for(lambda: all(len(s) >= 2 for s in sinks), 30.0)
        sent_at, t0 = time.time(), time.monotonic()
        router.terminate()
        code = router.wait(GRACE_S + 30.0)
        exit_s = time.monotonic() - t0
        for thread in threads:
            thread.join(10.0)
    endings = [_ending(s) for s in sinks]
    return {
        "grace_s": GRACE_S,
        "streams": STREAMS,
        "all_trickling_at_sigterm": trickling,
        "exit_s": exit_s,
        "exit_code": code,
        "within_grace": exit_s <= GRACE_S,
        "stream_endings": {e: endings.count(e) for e in sorted(set(endings))},
        "state_saved": state.exists() and state.stat().st_mtime >= sent_at - 1.0,
    }


def _stream_into(url: str, sink: list[Any]) -> None:
    body = {"model": "auto", "stream": True, "messages": [{"role": "user", "content": "A long story."}]}
    try:
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60.0) as response:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    data = line.removeprefix("data: ")
                    sink.append(data if data == "[DONE]" else json.loads(data))
    except httpx.HTTPError as exc:
        sink.append(type(exc).__name__)


def _ending(sink: list[Any]) -> str:
    last = sink[-1] if sink else "nothing"
    if isinstance(last, dict) and "error" in last:
        return f"error event: {last['error'].get('code')}"
    return str(last) if not isinstance(last, dict) else "cut without an event"


def print_table(result: dict[str, Any]) -> None:
    burst, stop = result["burst"], result["sigterm"]
    print("\nbudget burst: 100 requests at once on 2 replicas, per-key cap of 5 worst cases")
    print(f"  answered {burst['answered']}, refused (429) {burst['refused_429']}, other {burst['other']}")
    cap, spent, worst = burst["cap_usd"], burst["spent_usd"], burst["worst_case_usd"]
    print(f"  cap ${cap:.6f}, spent ${spent:.6f}, worst case ${worst:.6f}")
    print(
        f"  overshoot ${burst['overshoot_usd']:.6f} = {burst['overshoot_worst_cases']:.2f} worst cases "
        f"(every request served: ${burst['without_holds_usd']:.6f})"
    )
    print(f"\nSIGTERM with {stop['streams']} trickling streams, server.shutdown_grace_s {stop['grace_s']:g}")
    exit_s, code, within = stop["exit_s"], stop["exit_code"], stop["within_grace"]
    print(f"  exit after {exit_s:.2f} s (code {code}), within grace: {within}")
    print(f"  streams ended: {stop['stream_endings']}; learned state saved: {stop['state_saved']}")
