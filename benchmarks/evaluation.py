"""Evaluators: how closely the simulated judge follows true quality, and what the hook costs.

    python3 benchmarks/evaluation.py

Judge: six simulated models of true quality 0.3-0.9 answer 200 prompts each through the
simulator app in-process (Starlette's TestClient, no network); the simulator's judge grades
every answer with the router's judge prompt. Reported: the Pearson correlation of the judge's
scores with the answering model's quality, and the mean score per model. Hook: the time the
``accounted`` hook adds to a request (a queue put), best of 20 runs of 1,000, and the time the
built-in evaluators then take per answer in the worker. Writes benchmarks/results/evaluation.json.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from starlette.testclient import TestClient

from adaptive_router import load_settings
from adaptive_router._bench import machine_info
from adaptive_router.core import Catalogue, Model, Router, RouteRequest
from adaptive_router.evaluation import judge_messages, parse_score
from adaptive_router.pipeline import Call, Evaluations
from adaptive_router.simulator import JUDGE_MODEL, Scenario, SimModel, create_simulator_app
from adaptive_router.upstream import Completion

RESULTS = Path(__file__).resolve().parent / "results" / "evaluation.json"
QUALITIES = (0.3, 0.5, 0.6, 0.7, 0.8, 0.9)
PROMPTS = 200


def judge_agreement(seed: int = 1) -> dict[str, Any]:
    models = [SimModel(f"q/{q}", quality=q) for q in QUALITIES]
    app = create_simulator_app(models, Scenario(seed=seed, time_scale=0.0, error_rate=0.0))
    truth, judged = [], []
    with TestClient(app) as client:
        for i in range(PROMPTS):
            messages = [{"role": "user", "content": f"Question {i}: explain something."}]
            for model in models:
                body = {"model": model.id, "messages": messages}
                text = client.post("/v1/chat/completions", json=body).json()["choices"][0]["message"][
                    "content"
                ]
                grading = {
                    "model": JUDGE_MODEL,
                    "messages": judge_messages("Grade.", messages, text, 100_000),
                }
                reply = client.post("/v1/chat/completions", json=grading).json()["choices"][0]["message"]
                truth.append(model.quality)
                judged.append(parse_score(reply["content"], 10))
    scores = np.array(judged, dtype=float)
    return {
        "prompts": PROMPTS,
        "pearson": round(float(np.corrcoef(truth, scores)[0, 1]), 3),
        "mean_by_quality": {
            str(q): round(float(scores[i :: len(QUALITIES)].mean()), 3) for i, q in enumerate(QUALITIES)
        },
    }


async def hook_cost() -> dict[str, float]:
    settings = load_settings()
    router = Router.from_settings(settings, Catalogue([Model("m/a", 1e-7, 2e-7, 8192)], source="bench"))
    evaluations = Evaluations(settings.evaluation, router, None, lambda c: 0.0)  # type: ignore[arg-type]
    route = RouteRequest(messages=[{"role": "user", "content": "Hello there."}])
    data = {"choices": [{"message": {"content": "word " * 100}, "finish_reason": "stop"}]}
    completion = Completion("m/a", "bench", 200, data, 0.5, 0.1, 4, 100, None, {}, "stop")
    call = Call(route, {"messages": route.messages}, decision=router.decide(route), completion=completion)
    call.outcome = "ok"
    best = float("inf")
    for _ in range(20):
        started = time.perf_counter()
        for _ in range(1000):
            evaluations.accounted(call)
        best = min(best, (time.perf_counter() - started) / 1000)
        jobs = [evaluations.queue.get_nowait() for _ in range(evaluations.queue.qsize())]
    started = time.perf_counter()
    for job in jobs:
        await evaluations.run(job)
    per_answer = (time.perf_counter() - started) / len(jobs)
    return {"accounted_us": round(best * 1e6, 2), "builtins_per_answer_us": round(per_answer * 1e6, 2)}


def main() -> int:
    result = {"machine": machine_info(), "judge": judge_agreement(), "hook": asyncio.run(hook_cost())}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    judge, hook = result["judge"], result["hook"]
    print(f"simulated judge vs true quality, {judge['prompts']} prompts x {len(QUALITIES)} models:")
    print(f"  pearson {judge['pearson']}; mean score by true quality {judge['mean_by_quality']}")
    print(f"accounted hook on the request path: {hook['accounted_us']} us (best of 20 x 1,000)")
    print(f"built-in evaluators in the worker: {hook['builtins_per_answer_us']} us per answer")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
