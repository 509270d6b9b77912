"""Hostile input beside normal traffic (issue 13), a scenario of ``benchmarks/reliability.py``.

    python3 benchmarks/reliability.py --edges-only [--quick]

Two parts, each against one router process (uvicorn, ``app_from_environment``) on 127.0.0.1:

- **glob bomb**: paced normal chat requests (``auto:speed``) over a 400-model catalogue, alone
  and beside one client sending back to back requests that each carry the most ``route.allow``
  and ``route.deny`` globs a body may (32 + 32, of which 8 + 8 new wildcard globs of 128
  characters built so that nothing rules them out cheaply) or far more (33,000 globs in a ~1 MB
  body, refused with a 400). Alternating runs without and with it, 2-3 rounds. Reported: the
  normal requests' p50/p99 in each run, the ratio of the median p99s (the goal: within 2x), what
  the bomb got back, and ``/health`` latency meanwhile.
- **misbehaving upstream**: ``bad/x`` is served by ``tests/hostile_upstream.py`` (in this
  process), the rest by the simulator; requests pin ``bad/x`` (fallback on) and ask it for a
  deep answer (1,000 levels), a 60 MB answer, a stream with a deep event, and a stream whose
  first line is 64 MB. Reported per kind: statuses, which model answered, error events, latency,
  and the router's peak RSS (VmHWM) before and after.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from tests.hostile_upstream import create_hostile_app
from tests.process_fixtures import CHAT_BODY, Catalogue, ProcessGroup, Served, router_env, scenario
from tests.servers import running_server

__all__ = ["print_edges", "run_edges"]

GLOB_MODELS = tuple(f"lab/m{i:03d}" for i in range(400))
NORMAL_RATE_PER_S = 20.0
BOMB_CONCURRENCY = 1  # one client sending back to back
BOMB_BODIES = 64
HOSTILE_KINDS = {
    "deep answer (1,000 levels)": {"hostile": "deep"},
    "60 MB answer": {"hostile": "huge", "size": 60 * 1024 * 1024},
    "stream, deep 2nd event": {"hostile": "stream_deep_later", "stream": True},
    "stream, 64 MB first line": {"hostile": "stream_long_line", "size": 64 * 1024 * 1024, "stream": True},
}
JSON_HEADERS = {"content-type": "application/json"}


# --- glob bomb -------------------------------------------------------------------------------------


def _glob(rng: random.Random) -> str:
    """128 characters, wildcards and id characters alternating: every literal part is in some
    id, so nothing rules the glob out cheaply (the worst case: a regex built and run per id)."""
    return "".join(rng.choice("*?") if k % 2 == 0 else rng.choice("lab/m0123456789") for k in range(128))


def bomb_bodies(seed: int = 13) -> list[bytes]:
    """Bodies at the glob limits (new globs each) and, every fourth, 33,000 globs (~1 MB)."""
    rng = random.Random(seed)
    bodies = []
    for i in range(BOMB_BODIES):
        if i % 4 == 3:
            route = {"deny": [f"x*{n}*y" for n in range(33_000)]}
        else:
            junk = [f"nobody/{rng.random()}" for _ in range(24)]  # exact ids: a lookup each
            allow = [*(_glob(rng) for _ in range(7)), "lab/*", *junk]
            route = {"allow": allow, "deny": [*(_glob(rng) for _ in range(8)), *junk]}
        bodies.append(json.dumps({**CHAT_BODY, "route": route}).encode())
    return bodies


async def _paced(
    client: httpx.AsyncClient, url: str, body: bytes, rate: float, seconds: float
) -> list[float]:
    """Requests at ``rate`` for ``seconds``; the latency (s) of each 200."""
    latencies: list[float] = []
    loop = asyncio.get_running_loop()
    start = loop.time()

    async def one() -> None:
        sent = loop.time()
        response = await client.post(url, content=body, headers=JSON_HEADERS)
        if response.status_code == 200:
            latencies.append(loop.time() - sent)

    tasks = []
    for i in range(int(rate * seconds)):
        delay = start + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one()))
    await asyncio.gather(*tasks, return_exceptions=True)
    return latencies


async def _flood(client: httpx.AsyncClient, url: str, bodies: list[bytes], until: float) -> dict[str, Any]:
    """``BOMB_CONCURRENCY`` workers sending ``bodies`` back to back until ``until``."""
    statuses: dict[str, int] = {}
    times: list[float] = []
    loop = asyncio.get_running_loop()

    async def worker(offset: int) -> None:
        i = offset
        while loop.time() < until:
            sent = loop.time()
            response = await client.post(url, content=bodies[i % len(bodies)], headers=JSON_HEADERS)
            times.append(loop.time() - sent)
            statuses[str(response.status_code)] = statuses.get(str(response.status_code), 0) + 1
            i += BOMB_CONCURRENCY

    await asyncio.gather(*(worker(k) for k in range(BOMB_CONCURRENCY)))
    return {"statuses": statuses, "sent": len(times), **_ms(times)}


async def _probe_health(client: httpx.AsyncClient, url: str, until: float) -> dict[str, Any]:
    times = []
    loop = asyncio.get_running_loop()
    while loop.time() < until:
        sent = loop.time()
        await client.get(url)
        times.append(loop.time() - sent)
        await asyncio.sleep(0.05)
    return _ms(times)


def _ms(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"count": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
    p50, p99 = np.percentile(values, (50, 99)) * 1000
    return {
        "count": len(values),
        "p50_ms": round(p50, 1),
        "p99_ms": round(p99, 1),
        "max_ms": round(max(values) * 1000, 1),
    }


async def _glob_run(base: str, seconds: float, bodies: list[bytes] | None) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(timeout=30.0, limits=limits) as client:
        until = asyncio.get_running_loop().time() + seconds
        normal_body = json.dumps(CHAT_BODY).encode()
        jobs = [
            _paced(client, base + "/v1/chat/completions", normal_body, NORMAL_RATE_PER_S, seconds),
            _probe_health(client, base + "/health", until),
        ]
        if bodies is not None:
            jobs.append(_flood(client, base + "/v1/chat/completions", bodies, until))
        results = await asyncio.gather(*jobs)
    run = {"normal": _ms(results[0]), "health": results[1]}
    if bodies is not None:
        run["bomb"] = results[2]
    return run


def glob_bomb(work: Path, seconds: float, rounds: int) -> dict[str, Any]:
    """``rounds`` pairs of runs, without then with the bomb, each ``seconds`` long: on a shared
    machine one run's p99 swings with other work, so the ratio is of the medians over rounds."""
    catalogue = Catalogue.write(work, ids=GLOB_MODELS)
    bodies = bomb_bodies()
    runs: dict[str, list[dict[str, Any]]] = {"alone": [], "with_bomb": []}
    with ProcessGroup(work) as group:
        sim = group.simulator(
            catalogue, scenario(models={"*": {"ttft_s": 0.01, "tpot_s": 1e-5, "tail_prob": 0.0}})
        )
        router = group.router("globs", sim, router_env(catalogue))
        asyncio.run(_glob_run(router.url, 2.0, None))  # warm-up: connections, learning
        for _ in range(rounds):
            runs["alone"].append(asyncio.run(_glob_run(router.url, seconds, None)))
            runs["with_bomb"].append(asyncio.run(_glob_run(router.url, seconds, bodies)))
        rss_mb = router.rss_kb() / 1024
    medians = {
        label: {
            stat: float(np.median([run["normal"][stat] for run in each])) for stat in ("p50_ms", "p99_ms")
        }
        for label, each in runs.items()
    }
    return {
        "models": len(GLOB_MODELS),
        "normal_rate_per_s": NORMAL_RATE_PER_S,
        "seconds": seconds,
        "rounds": rounds,
        "runs": runs,
        "median": medians,
        "p99_ratio": round(medians["with_bomb"]["p99_ms"] / medians["alone"]["p99_ms"], 2),
        "router_rss_mb_after": round(rss_mb, 1),
    }


# --- misbehaving upstream --------------------------------------------------------------------------


def _peak_rss_mb(served: Served) -> float:
    for line in Path(f"/proc/{served.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _hostile_call(router: Served, extra: dict[str, Any]) -> dict[str, Any]:
    body = {**CHAT_BODY, "model": "bad/x", **extra}
    started = time.monotonic()
    response = router.http.post(
        "/v1/chat/completions", content=json.dumps(body).encode(), headers=JSON_HEADERS
    )
    seconds = time.monotonic() - started
    events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    return {
        "status": response.status_code,
        "model": response.headers.get("x-router-model"),
        "error_event": any(event.startswith('{"error"') for event in events),
        "seconds": seconds,
    }


def misbehaving_upstream(work: Path, repeats: int) -> dict[str, Any]:
    ids = ("bad/x", "lab/a", "lab/b")
    catalogue = Catalogue.write(work, ids=ids)
    with running_server(create_hostile_app()) as hostile, ProcessGroup(work) as group:
        sim = group.simulator(catalogue, scenario())
        providers = {
            "hostile": {"base_url": hostile + "/v1", "models": ["bad/*"]},
            "sim": {"base_url": sim.url + "/v1"},
        }
        env = router_env(
            catalogue,
            UPSTREAM__SIMULATE="never",
            UPSTREAM__PROVIDERS=json.dumps(providers),
            UPSTREAM__BREAKER_FAILURES="1000",
        )
        router = group.router("hostile", sim, env)
        kinds: dict[str, Any] = {}
        for kind, extra in HOSTILE_KINDS.items():
            before = _peak_rss_mb(router)
            calls = [_hostile_call(router, extra) for _ in range(repeats)]
            kinds[kind] = {
                "requests": repeats,
                "statuses": sorted({c["status"] for c in calls}),
                "answered_by": sorted({str(c["model"]) for c in calls}),
                "error_events": sum(c["error_event"] for c in calls),
                "max_seconds": round(max(c["seconds"] for c in calls), 2),
                "peak_rss_mb_before": round(before, 1),
                "peak_rss_mb_after": round(_peak_rss_mb(router), 1),
            }
        metrics = router.get("/metrics.json")
    return {
        "kinds": kinds,
        "router_requests": metrics["requests"]["by_outcome"],
        "bad_x_errors": metrics["models"].get("bad/x", {}).get("errors"),
    }


# --- the scenario ----------------------------------------------------------------------------------


def run_edges(work: Path, quick: bool) -> dict[str, Any]:
    """Both parts; ``quick`` shortens them (2 rounds of 8 s runs, 2 calls per misbehaviour)."""
    (work / "globs").mkdir()
    (work / "hostile").mkdir()
    return {
        "glob_bomb": glob_bomb(work / "globs", 8.0 if quick else 15.0, 2 if quick else 3),
        "misbehaving_upstream": misbehaving_upstream(work / "hostile", 2 if quick else 5),
    }


def print_edges(result: dict[str, Any]) -> None:
    bomb = result["glob_bomb"]
    print(
        f"hostile input: glob bomb beside {bomb['normal_rate_per_s']:g} normal req/s "
        f"({bomb['models']} models, {bomb['seconds']:g} s per run)"
    )
    for label, each in bomb["runs"].items():
        for run in each:
            line = f"  {label:<10} normal p50 {run['normal']['p50_ms']} ms, p99 {run['normal']['p99_ms']} ms"
            line += f"; /health p99 {run['health']['p99_ms']} ms"
            if "bomb" in run:
                flood = run["bomb"]
                line += f"; bomb: {flood['sent']} requests {flood['statuses']}, p50 {flood['p50_ms']} ms"
            print(line)
    median = bomb["median"]
    print(
        f"  median over {bomb['rounds']} rounds: normal p99 {median['alone']['p99_ms']:.1f} ms alone, "
        f"{median['with_bomb']['p99_ms']:.1f} ms with the bomb: {bomb['p99_ratio']}x (goal: under 2x)"
    )
    upstream = result["misbehaving_upstream"]
    print("hostile input: misbehaving upstream (bad/x pinned, fallback on)")
    for kind, row in upstream["kinds"].items():
        print(
            f"  {kind:<26} {row['requests']} requests: status {row['statuses']}, answered by "
            f"{row['answered_by']}, error events {row['error_events']}, max {row['max_seconds']} s, "
            f"router peak RSS {row['peak_rss_mb_before']} -> {row['peak_rss_mb_after']} MB"
        )
    print(f"  router counted {upstream['router_requests']}; bad/x errors: {upstream['bad_x_errors']}")
