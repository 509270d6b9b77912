"""Measuring the decision: synthetic catalogues, a timing loop, and a plain-Python baseline.

Shared by ``adaptive-router benchmark`` and ``benchmarks/decision_latency.py`` so that both
report the same thing.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from ._settings import Settings
from .core._catalogue import Catalogue, Model, load_bundled
from .core._decision import Outcome, RouteRequest
from .core._router import Router

__all__ = [
    "Timing",
    "machine_info",
    "python_loop_decide",
    "sample_requests",
    "synthetic_catalogue",
    "time_decisions",
]


def synthetic_catalogue(n: int, seed: int = 0, base: Catalogue | None = None) -> Catalogue:
    """``n`` models: the bundled ones first, then copies with prices and priors jittered."""
    base = base or load_bundled()
    rng = np.random.default_rng(seed)
    models: list[Model] = []
    for i in range(n):
        source = base.models[i % len(base)]
        if i < len(base):
            models.append(source)
            continue
        jitter = 2.0 ** rng.uniform(-1.0, 1.0, size=4)
        models.append(
            replace(
                source,
                id=f"{source.id}~{i}",
                price_prompt=source.price_prompt * float(jitter[0]),
                price_completion=source.price_completion * float(jitter[1]),
                ttft_s=source.ttft_s * float(jitter[2]),
                tpot_s=source.tpot_s * float(jitter[3]),
                quality=float(np.clip(source.quality + rng.normal(0, 0.05), 0.0, 1.0)),
            )
        )
    return Catalogue(models, source=f"synthetic({n})")


def sample_requests(count: int = 64, seed: int = 0) -> list[RouteRequest]:
    """Varied requests with the constraints a proxy sees: latency and cost caps, capabilities."""
    rng = np.random.default_rng(seed)
    prompts = [
        "Write a python function that merges two sorted lists.",
        "What is 17 * 23 + 4?",
        "Translate into French: the meeting is moved to Thursday.",
        "Summarize the key points of the following text: " + "lorem ipsum dolor sit amet " * 20,
        "Tell me a short story about a lighthouse keeper.",
        "Explain the difference between TCP and UDP.",
    ]
    modes = ["speed", "cost", "quality", "balanced", None]
    requests = []
    for i in range(count):
        requests.append(
            RouteRequest(
                messages=[{"role": "user", "content": prompts[i % len(prompts)]}],
                mode=modes[int(rng.integers(len(modes)))],
                max_tokens=int(rng.choice([256, 512, 1024])),
                max_latency_ms=float(rng.choice([30_000.0, 60_000.0])),
                max_cost_usd=0.5,
                capabilities=frozenset({"tools"}) if i % 4 == 0 else frozenset(),
            )
        )
    return requests


@dataclass(frozen=True)
class Timing:
    p50_us: float
    p95_us: float
    p99_us: float
    mean_us: float
    per_second: float
    iterations: int

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def time_decisions(
    router: Router, requests: Sequence[RouteRequest], iterations: int, *, record: bool = True
) -> Timing:
    """Time ``iterations`` decisions end to end (profile, mask, score, explore, rank), each
    followed, as in the service, by ``record`` of its answer (a seeded latency and length): the
    next decision then reads estimates that an outcome just changed. ``record=False`` times
    ``decide`` alone."""
    outcomes = _outcomes(router, iterations)
    for request in requests[: min(len(requests), 200)]:
        router.decide(request)  # warm caches and code paths
    samples = np.empty(iterations)
    n = len(requests)
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection inside one sample says nothing about the decision
    try:
        clock = time.perf_counter
        started = clock()
        for i in range(iterations):
            t = clock()
            decision = router.decide(requests[i % n])
            if record:
                latency, tokens = outcomes[i]
                router.record(
                    decision,
                    Outcome(model=decision.model, success=True, latency_s=latency, completion_tokens=tokens),
                )
            samples[i] = clock() - t
        total = clock() - started
    finally:
        if gc_was_enabled:
            gc.enable()
    p50, p95, p99 = np.percentile(samples, [50, 95, 99]) * 1e6
    return Timing(
        float(p50), float(p95), float(p99), float(samples.mean() * 1e6), iterations / total, iterations
    )


def _outcomes(router: Router, iterations: int) -> list[tuple[float, int]]:
    """Seeded answer latencies and lengths, drawn before timing starts."""
    rng = np.random.default_rng(7)
    latency = np.exp(rng.normal(0.0, 0.3, iterations))
    tokens = rng.integers(20, 400, iterations)
    return [(float(a), int(b)) for a, b in zip(latency, tokens, strict=True)]


def time_floor(models: int, iterations: int, seed: int = 0) -> Timing:
    """The published design's score in NumPy over ``models`` models, nothing more: latency and
    cost min-max normalised, a weighted sum with quality, argmax (no profile, constraints,
    learning or exploration). What every policy's decide + record is compared with."""
    rng = np.random.default_rng(seed)
    latency, cost, quality = (
        rng.uniform(0.2, 5.0, models),
        rng.uniform(1e-6, 1e-2, models),
        rng.uniform(0, 1, models),
    )
    w_latency, w_cost, w_quality = 0.4, 0.3, 0.3
    samples = np.empty(iterations)
    clock = time.perf_counter
    started = clock()
    for i in range(iterations):
        t = clock()
        lat = (latency - latency.min()) / (latency.max() - latency.min())
        cst = (cost - cost.min()) / (cost.max() - cost.min())
        score = w_latency * (1 - lat) + w_cost * (1 - cst) + w_quality * quality
        int(score.argmax())
        samples[i] = clock() - t
    total = clock() - started
    p50, p95, p99 = np.percentile(samples, [50, 95, 99]) * 1e6
    return Timing(
        float(p50), float(p95), float(p99), float(samples.mean() * 1e6), iterations / total, iterations
    )


def python_loop_decide(router: Router, request: RouteRequest) -> str:
    """The same greedy score and masks as ``Router.decide``, one model at a time in Python.

    The baseline the vectorised path is measured against; it reads the same estimates.
    """
    catalogue, cfg = router.catalogue, router.config
    _, (wl, wc, wq) = router.weights_for(request.mode, request.weights)
    profile = router.profile(request)
    est = router.learner.estimates(router.clock())
    out = float(profile.expected_output_tokens)
    need = profile.prompt_tokens + (request.max_tokens or 0)
    best, best_score = None, -math.inf
    for i, model_id in enumerate(catalogue.ids):
        if need > catalogue.context_length[i] or not router.available[i]:
            continue
        if request.max_tokens is not None and catalogue.max_output_tokens[i] < request.max_tokens:
            continue
        q_latency = est.ttft_q[i] + est.tpot_q[i] * out
        if request.max_latency_ms is not None and q_latency > request.max_latency_ms / 1000:
            continue
        answer = request.max_tokens if request.max_tokens is not None else out
        bound = catalogue.price_prompt[i] * profile.prompt_tokens + catalogue.price_completion[i] * answer
        if request.max_cost_usd is not None and bound > request.max_cost_usd:
            continue
        latency = est.ttft[i] + est.tpot[i] * out
        cost = (
            max(catalogue.price_prompt[i], 1e-15) * profile.prompt_tokens
            + max(catalogue.price_completion[i], 1e-15) * out
        )
        score = (
            wl * (1 - cfg.latency_scale.norm(latency))
            + wc * (1 - cfg.cost_scale.norm(cost))
            + wq * est.value[profile.cell, i]
        )
        if score > best_score:
            best, best_score = model_id, score
    if best is None:
        raise ValueError("no eligible model")
    return best


def time_python_loop(router: Router, requests: Sequence[RouteRequest], iterations: int) -> Timing:
    samples = np.empty(iterations)
    clock = time.perf_counter
    started = clock()
    for i in range(iterations):
        t = clock()
        python_loop_decide(router, requests[i % len(requests)])
        samples[i] = clock() - t
    total = clock() - started
    p50, p95, p99 = np.percentile(samples, [50, 95, 99]) * 1e6
    return Timing(
        float(p50), float(p95), float(p99), float(samples.mean() * 1e6), iterations / total, iterations
    )


def router_for(
    settings: Settings,
    models: int,
    policy: str | None = None,
    seed: int = 0,
    clock: Callable[[], float] = time.time,
) -> Router:
    """A router over a synthetic catalogue of ``models`` models, with a fixed exploration seed
    (and ``clock``: a simulated one makes its refreshes independent of how fast it runs)."""
    exploration = settings.exploration.model_copy(
        update={"seed": seed, **({"policy": policy} if policy else {})}
    )
    cache = settings.cache.model_copy(update={"decision_ttl_seconds": 0.0})  # time decisions, not cache hits
    tuned = settings.model_copy(update={"exploration": exploration, "cache": cache})
    return Router.from_settings(tuned, synthetic_catalogue(models, seed=seed), clock=clock)


def machine_info(packages: Sequence[str] = ("numpy",)) -> dict[str, Any]:
    """What a benchmark result was measured on: CPU, cores, Python, load, package versions."""
    import os
    import platform
    from importlib import metadata

    cpu = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            cpu = next((ln.split(":", 1)[1].strip() for ln in handle if ln.startswith("model name")), cpu)
    except OSError:
        pass
    versions: dict[str, str | None] = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
        "load_average": list(os.getloadavg()),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
