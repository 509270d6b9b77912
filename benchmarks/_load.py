"""A bounded asyncio + httpx load generator: the fallback of ``http_overhead.py`` when wrk is absent.

    python3 benchmarks/_load.py --url http://127.0.0.1:8000/route --body-file body.json \\
        --connections 32 --duration 5 --warmup 1

Each connection is a task with its own one-connection ``httpx.AsyncClient`` (keep-alive, and no
shared pool whose bookkeeping grows with concurrency), sending requests back to back: a closed
loop, like wrk. It runs in its own process, so that its CPU is not the server's, and prints one
JSON line: requests, duration_s, requests_per_s, p50/p90/p99/max latency in ms, error counts and
its own CPU time in the measured phase. With ``--handshake`` it prints ``warmed`` after the
warm-up and waits for a line on stdin before measuring. Bounded by ``--duration`` and
``--max-requests``. Far slower than wrk: at many connections it measures itself, not the server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from dataclasses import dataclass, field

import httpx

_TIMEOUT_S = 10.0


@dataclass
class _Tally:
    latencies_s: list[float] = field(default_factory=list)
    status_errors: int = 0
    transport_errors: int = 0


async def _worker(
    client: httpx.AsyncClient, url: str, body: bytes, stop_at: float, budget: list[int], tally: _Tally
) -> None:
    headers = {"content-type": "application/json"}
    clock = time.perf_counter
    while budget[0] > 0 and clock() < stop_at:
        budget[0] -= 1
        started = clock()
        try:
            response = await client.post(url, content=body, headers=headers)
            await response.aread()
        except httpx.HTTPError:
            tally.transport_errors += 1
            continue
        tally.latencies_s.append(clock() - started)
        if response.status_code >= 400:
            tally.status_errors += 1


async def _phase(
    clients: list[httpx.AsyncClient], url: str, body: bytes, duration_s: float, max_requests: int
) -> _Tally:
    tally = _Tally()
    budget = [max_requests]
    stop_at = time.perf_counter() + duration_s
    await asyncio.gather(*(_worker(c, url, body, stop_at, budget, tally) for c in clients))
    return tally


def _percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (what wrk's histogram reports)."""
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def summarise(tally: _Tally, duration_s: float, cpu_s: float) -> dict[str, object]:
    """The same keys ``http_overhead.py`` reads from wrk's report."""
    ms = sorted(x * 1000.0 for x in tally.latencies_s)
    return {
        "requests": len(ms),
        "duration_s": duration_s,
        "requests_per_s": len(ms) / duration_s if duration_s > 0 else 0.0,
        "p50_ms": _percentile(ms, 50),
        "p90_ms": _percentile(ms, 90),
        "p99_ms": _percentile(ms, 99),
        "max_ms": ms[-1] if ms else 0.0,
        "errors": {"status": tally.status_errors, "transport": tally.transport_errors},
        "generator_cpu_s": cpu_s,
    }


async def run(
    url: str,
    body: bytes,
    connections: int,
    duration_s: float,
    warmup_s: float,
    max_requests: int,
    handshake: bool = False,
) -> dict[str, object]:
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    clients = [httpx.AsyncClient(limits=limits, timeout=_TIMEOUT_S) for _ in range(connections)]
    try:
        if warmup_s > 0:
            await _phase(clients, url, body, warmup_s, max_requests)
        if handshake:
            print("warmed", flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        cpu, started = time.process_time(), time.perf_counter()
        tally = await _phase(clients, url, body, duration_s, max_requests)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    finally:
        for client in clients:
            await client.aclose()
    return summarise(tally, elapsed, cpu)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--body-file", required=True)
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--max-requests", type=int, default=1_000_000)
    parser.add_argument("--handshake", action="store_true", help="say 'warmed', wait for a stdin line")
    args = parser.parse_args(argv)
    if not args.url.startswith(("http://127.0.0.1:", "http://localhost:")):
        parser.error("only loopback URLs are allowed")
    with open(args.body_file, "rb") as fh:
        body = fh.read()
    result = asyncio.run(
        run(args.url, body, args.connections, args.duration, args.warmup, args.max_requests, args.handshake)
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
