"""Adaptation through the real service: part 4 of ``benchmarks/learning.py``.

A router (``create_app``, default settings but the policy) and a simulated OpenAI-compatible
endpoint, each a real uvicorn server on 127.0.0.1, and plain HTTP requests between them. Four
models with equal public priors on one provider; the endpoint's real speed is 10x faster than
those priors, as published, or 10x slower. Every request is ``auto:speed`` with a 20-token
answer, one at a time. The fastest model slows down fivefold at request ``SLOW_AT`` and recovers
at ``RECOVER_AT``. Reported per policy and endpoint speed:

- ``requests_to_move_80pct_off``: requests after the slowdown until the next 20 send the slowed
  model at most 20% of the traffic;
- ``requests_to_regain_half``: requests after the recovery until the next 20 send it at least
  half the share it had before;
- ``explored_share``: requests marked ``explored`` after the first 100 of the stationary stretch.

    python3 benchmarks/learning.py --service-only [--quick]
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import uvicorn

from adaptive_router import Catalogue, Model, create_app, load_settings
from adaptive_router.simulator import Scenario, SimEvent, create_simulator_app, sim_models_from_catalogue

IDS = ("edge/a", "edge/b", "edge/c", "edge/d")
SLOWED = IDS[0]
TRUTH = {
    "edge/a": (0.010, 0.0004),
    "edge/b": (0.016, 0.0007),
    "edge/c": (0.018, 0.0006),
    "edge/d": (0.020, 0.0008),
}
SPEEDS = {"10x faster than the priors": 10.0, "as the priors": 1.0, "10x slower than the priors": 0.1}
SLOW_AT, RECOVER_AT, END = 200, 400, 750
WINDOW = 20


@contextlib.contextmanager
def _serving(app: Any) -> Iterator[str]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", ws="none"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def _first(chosen: list[str], ok: Any) -> int | None:
    for k in range(len(chosen) - WINDOW + 1):
        if ok(sum(1 for m in chosen[k : k + WINDOW] if m == SLOWED) / WINDOW):
            return k
    return None


def run_one(policy: str, prior_over_truth: float, seed: int) -> dict[str, Any]:
    ttft, tpot = 0.016 * prior_over_truth, 0.0007 * prior_over_truth
    catalogue = Catalogue(
        [Model(i, 1e-7, 2e-7, 32_000, ttft_s=ttft, tpot_s=tpot, quality=0.6) for i in IDS], source="bench"
    )
    scenario = Scenario.model_validate(
        {
            "seed": seed,
            "error_rate": 0.0,
            "rate_limit_rate": 0.0,
            "min_chunk_interval_s": 0.0,
            "models": {
                i: {"ttft_s": t, "tpot_s": p, "ttft_sigma": 0.15, "tpot_sigma": 0.15, "tail_prob": 0.0}
                for i, (t, p) in TRUTH.items()
            },
            "events": [
                SimEvent(at_request=SLOW_AT, model=SLOWED, action="slow", factor=5.0).model_dump(),
                SimEvent(at_request=RECOVER_AT, model=SLOWED, action="recover").model_dump(),
            ],
        }
    )
    body = {
        "model": "auto:speed",
        "max_tokens": 20,
        "messages": [{"role": "user", "content": "Say something short."}],
    }
    chosen: list[str] = []
    explored: list[bool] = []
    with _serving(create_simulator_app(sim_models_from_catalogue(catalogue), scenario)) as sim_url:
        settings = load_settings(
            exploration={"policy": policy, "seed": seed},
            upstream={"providers": {"edge": {"base_url": sim_url + "/v1", "models": ["edge/*"]}}},
        )
        with (
            _serving(create_app(settings, catalogue=catalogue)) as url,
            httpx.Client(base_url=url, timeout=10) as http,
        ):
            for _ in range(END):
                answer = http.post("/v1/chat/completions", json=body).raise_for_status().json()
                chosen.append(answer["model"])
                explored.append(bool(answer["routing"]["decision"].get("explored")))
    before = sum(1 for m in chosen[SLOW_AT - 100 : SLOW_AT] if m == SLOWED) / 100
    slow, after = chosen[SLOW_AT:RECOVER_AT], chosen[RECOVER_AT:]
    return {
        "share_before": before,
        "explored_share": sum(explored[100:SLOW_AT]) / (SLOW_AT - 100),
        "requests_to_move_80pct_off": _first(slow, lambda share: share <= 0.2),
        "share_while_slow": sum(1 for m in slow[100:] if m == SLOWED) / len(slow[100:]),
        "requests_to_regain_half": _first(after, lambda share: share >= 0.5 * before),
        "share_after_recovery": sum(1 for m in after[200:] if m == SLOWED) / len(after[200:]),
    }


def service_adaptation(policies: list[str], seeds: list[int], quick: bool) -> list[dict[str, Any]]:
    rows = []
    speeds = {k: v for k, v in SPEEDS.items() if not quick or v != 1.0}
    for label, factor in speeds.items():
        for policy in policies:
            runs = [run_one(policy, factor, seed) for seed in seeds]
            rows.append({"endpoint": label, "policy": policy, "runs": runs})
    return rows
