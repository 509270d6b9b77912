"""What logging and tracing cost on chat throughput: the same router with each turned on.

    python3 benchmarks/observability_overhead.py             # ~4 minutes
    python3 benchmarks/observability_overhead.py --quick     # one round, short runs, ~1 minute

The servers and the load generator are benchmarks/http_overhead.py's (every process on
127.0.0.1; the simulated upstream answers at once, so what is measured is overhead; wrk when
installed). The router runs under uvicorn with uvloop + httptools, the response cache off, its
log written to a file, in these configurations:

- ``quiet``: ``log_level: warning``, no access line (the floor)
- ``access text`` / ``access json``: the default access line per request, text or JSON
- ``traces, no export``: OpenTelemetry spans made and dropped (``OTEL_TRACES_EXPORTER=none``)
- ``traces, OTLP``: spans batched and exported over OTLP/HTTP to a local sink process

Rounds interleave the configurations (quiet, access, ..., quiet, access, ...) so that a busy
machine's drift falls on all of them; each figure is the median over rounds. Writes
benchmarks/results/observability_overhead.json and prints a table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from http_overhead import (
    BENCH_DIR,
    HOST,
    MANY,
    Bench,
    Server,
    Variant,
    chat_body,
    child_env,
    free_port,
    load_average,
    measure,
    pick_generator,
    routed_model,
    running,
    simulator,
)

from adaptive_router._bench import machine_info

if TYPE_CHECKING:
    from starlette.applications import Starlette

RESULTS = BENCH_DIR / "results" / "observability_overhead.json"
VARIANT = Variant("uvloop", "httptools")
QUIET = {"ROUTER_SERVER__LOG_LEVEL": "warning", "ROUTER_SERVER__ACCESS_LOG": "false"}
CONFIGS: dict[str, dict[str, str]] = {
    "quiet": QUIET,
    "access text": {"ROUTER_SERVER__LOG_LEVEL": "info"},
    "access json": {"ROUTER_SERVER__LOG_LEVEL": "info", "ROUTER_SERVER__LOG_FORMAT": "json"},
    "traces, no export": {**QUIET, "ROUTER_TRACING__ENABLED": "true", "OTEL_TRACES_EXPORTER": "none"},
    "traces, OTLP": {**QUIET, "ROUTER_TRACING__ENABLED": "true", "OTEL_BSP_SCHEDULE_DELAY": "1000"},
}


def sink_app() -> Starlette:
    """An OTLP/HTTP collector that accepts and drops every export (uvicorn factory)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    async def traces(request: Request) -> Response:
        await request.body()
        return Response(b"", media_type="application/x-protobuf")

    async def ready(request: Request) -> Response:
        return JSONResponse({"ready": True})

    return Starlette(routes=[Route("/v1/traces", traces, methods=["POST"]), Route("/ready", ready)])


def sink(log_dir: Path) -> contextlib.AbstractContextManager[Server]:
    port = free_port()
    cmd = [sys.executable, "-m", "uvicorn", "observability_overhead:sink_app", "--factory"]
    cmd += ["--app-dir", str(BENCH_DIR), "--host", HOST, "--port", str(port), *VARIANT.uvicorn_args()]
    return running("otlp-sink", cmd, child_env({}), port, "/ready", log_dir)


def router(
    name: str, extra: Mapping[str, str], sim_url: str, log_dir: Path
) -> contextlib.AbstractContextManager[Server]:
    port = free_port()
    env = child_env(
        {
            "ROUTER_SIMULATOR_URL": sim_url + "/v1",
            "ROUTER_UPSTREAM__SIMULATE": "always",
            "ROUTER_CACHE__ENABLED": "false",
            **extra,
        }
    )
    cmd = [sys.executable, "-m", "uvicorn", "adaptive_router.service:app_from_environment", "--factory"]
    cmd += ["--host", HOST, "--port", str(port), *VARIANT.uvicorn_args()]
    return running(f"router-{name.replace(' ', '-').replace(',', '')}", cmd, env, port, "/ready", log_dir)


@contextlib.contextmanager
def routers(sim_url: str, sink_url: str, log_dir: Path) -> Iterator[dict[str, Server]]:
    with contextlib.ExitStack() as stack:
        servers = {}
        for name, extra in CONFIGS.items():
            if name == "traces, OTLP":
                extra = {**extra, "OTEL_EXPORTER_OTLP_ENDPOINT": sink_url}
            servers[name] = stack.enter_context(router(name, extra, sim_url, log_dir))
        yield servers


def run(bench: Bench, rounds: int, connections: list[int], sink_server: Server) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with routers(bench.simulator.base_url, sink_server.base_url, bench.log_dir) as servers:
        body = chat_body("auto")
        routed_model(servers["quiet"])  # fail early if the router does not answer
        for round_no in range(rounds):
            for conns in connections:
                for name, server in servers.items():
                    processes = {"server": server.pid}
                    if name == "traces, OTLP":
                        processes["sink"] = sink_server.pid
                    url = server.base_url + "/v1/chat/completions"
                    row = measure(bench, VARIANT, f"chat, {name}", url, body, conns, processes)
                    rows.append({**row, "config": name, "round": round_no})
    return rows


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for conns in sorted({r["connections"] for r in rows}):
        base = statistics.median(
            r["requests_per_s"] for r in rows if r["config"] == "quiet" and r["connections"] == conns
        )
        for name in CONFIGS:
            mine = [r for r in rows if r["config"] == name and r["connections"] == conns]
            rps = statistics.median(r["requests_per_s"] for r in mine)
            cpu = statistics.median(r["server_cpu_ms_per_request"]["server"] for r in mine)
            out.append(
                {
                    "config": name,
                    "connections": conns,
                    "requests_per_s": round(rps, 1),
                    "vs_quiet": round(rps / base - 1, 4),
                    "p50_ms": round(statistics.median(r["p50_ms"] for r in mine), 3),
                    "p99_ms": round(statistics.median(r["p99_ms"] for r in mine), 3),
                    "router_cpu_ms_per_request": round(cpu, 4),
                    "rounds": len(mine),
                }
            )
    return out


def print_table(table: list[dict[str, Any]]) -> None:
    print(
        "| configuration | connections | requests/s | vs quiet | p50 ms | p99 ms | router CPU per request |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in table:
        print(
            f"| {r['config']} | {r['connections']} | {r['requests_per_s']:,.0f} | {r['vs_quiet']:+.1%} "
            f"| {r['p50_ms']:.2f} | {r['p99_ms']:.1f} | {r['router_cpu_ms_per_request']:.3f} ms |"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one round of short runs")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--generator", choices=["auto", "wrk", "python"], default="auto")
    args = parser.parse_args(argv)
    rounds = 1 if args.quick else args.rounds
    measure_s, warmup_s = (3.0, 1.0) if args.quick else (6.0, 2.0)
    connections = [MANY] if args.quick else [1, MANY]
    with tempfile.TemporaryDirectory(prefix="obs-bench-") as tmp:
        work = Path(tmp)
        generator = pick_generator(args.generator, work)
        with simulator(work) as sim, sink(work) as sink_server:
            bench = Bench(generator, warmup_s, measure_s, args.quick, work, sim)
            rows = run(bench, rounds, connections, sink_server)
    table = summary(rows)
    result = {
        "machine": machine_info(),
        "generator": generator.name,
        "load_average_after": load_average(),
        "summary": table,
        "rows": rows,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    print_table(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
