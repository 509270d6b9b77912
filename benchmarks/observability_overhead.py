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
- ``traces, OTLP, 10% sampled``: the same with ``OTEL_TRACES_SAMPLER=parentbased_traceidratio``

Rounds interleave the configurations (quiet, access, ..., quiet, access, ...) so that a busy
machine's drift falls on all of them; each figure is the median over rounds. Writes
benchmarks/results/observability_overhead.json and prints a table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import statistics
import sys
import tempfile
import time
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
    "traces, OTLP, 10% sampled": {
        **QUIET,
        "ROUTER_TRACING__ENABLED": "true",
        "OTEL_BSP_SCHEDULE_DELAY": "1000",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.1",
    },
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
    label = "".join(c if c.isalnum() else "-" for c in name)
    return running(f"router-{label}", cmd, env, port, "/ready", log_dir)


@contextlib.contextmanager
def routers(sim_url: str, sink_url: str, log_dir: Path) -> Iterator[dict[str, Server]]:
    with contextlib.ExitStack() as stack:
        servers = {}
        for name, extra in CONFIGS.items():
            if "OTLP" in name:
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
                    if "OTLP" in name:
                        processes["sink"] = sink_server.pid
                    url = server.base_url + "/v1/chat/completions"
                    row = measure(bench, VARIANT, f"chat, {name}", url, body, conns, processes)
                    rows.append({**row, "config": name, "round": round_no})
    return rows


# --- in process: the added CPU per request, without servers ------------------------------------


class _DropSpans:
    """An exporter that takes every batch and keeps nothing (what a fast collector costs us)."""

    def export(self, spans: Any) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def _sample_call() -> Any:
    """A finished call as the hooks see it: a real decision over the bundled catalogue, one attempt."""
    from adaptive_router import load_settings
    from adaptive_router.core._catalogue import load_bundled
    from adaptive_router.core._decision import RouteRequest
    from adaptive_router.core._router import Router
    from adaptive_router.pipeline._pipeline import Call
    from adaptive_router.upstream._client import Completion
    from adaptive_router.upstream._execution import Attempt, Result

    router = Router.from_settings(load_settings(), load_bundled())
    route = RouteRequest(
        messages=[{"role": "user", "content": "Write a haiku about the sea."}], max_tokens=16
    )
    decision = router.decide(route)
    usage = {"prompt_tokens": 9, "completion_tokens": 16, "total_tokens": 25}
    data = {
        "id": "chatcmpl-1",
        "model": decision.model,
        "choices": [{"finish_reason": "stop"}],
        "usage": usage,
    }
    completion = Completion(decision.model, "simulated", 200, data, 0.01, None, 9, 16, None, {}, "stop")
    call = Call(route, {"messages": route.messages}, None, "auto", False)
    call.decision, call.completion, call.outcome, call.cost_usd = decision, completion, "ok", 1.2e-5
    call.result = Result(attempts=[Attempt(decision.model, "ok", 10.0)], completion=completion)
    return call


def _per_call_us(step: Any, count: int) -> float:
    for _ in range(min(count, 500)):  # warm up
        step()
    started = time.process_time()
    for _ in range(count):
        step()
    return (time.process_time() - started) / count * 1e6


def _logged(fmt: str, path: Path, count: int) -> float:
    from adaptive_router._logs import JsonFormatter, TextFormatter
    from adaptive_router.pipeline._observe import AccessLog

    root = logging.getLogger()
    handler = logging.FileHandler(path)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        call, hook = _sample_call(), AccessLog()
        return _per_call_us(lambda: hook.accounted(call), count)
    finally:
        root.removeHandler(handler)
        handler.close()
        root.setLevel(logging.WARNING)


def _traced(export: bool, count: int) -> float:
    from opentelemetry import propagate
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.trace import SpanKind

    from adaptive_router.pipeline._tracing import AttemptTracer, TraceHook

    provider = TracerProvider()
    if export:
        provider.add_span_processor(BatchSpanProcessor(_DropSpans()))  # type: ignore[arg-type]
    tracer = provider.get_tracer("bench")
    call, hook = _sample_call(), TraceHook(tracer)
    attempts = AttemptTracer(tracer, lambda model: "simulated")
    carrier = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
    assert call.completion is not None

    def one_request() -> None:  # what the middleware, the hooks and the executor do per request
        with tracer.start_as_current_span("POST", context=propagate.extract(carrier), kind=SpanKind.SERVER):
            hook.admitted(call)
            hook.decided(call)
            with attempts.attempt(call.completion.model_id) as span:
                propagate.inject({})
                span.answered(call.completion)
            hook.accounted(call)

    try:
        return _per_call_us(one_request, count)
    finally:
        provider.shutdown()


def micro(work: Path, count: int) -> list[dict[str, Any]]:
    """Microseconds of CPU each feature adds to one request, measured in this process."""
    rows = [
        {"feature": "access line, text, to a file", "us_per_request": _logged("text", work / "t.log", count)},
        {"feature": "access line, JSON, to a file", "us_per_request": _logged("json", work / "j.log", count)},
        {"feature": "traces (3 spans), not exported", "us_per_request": _traced(False, count)},
        {"feature": "traces (3 spans), batched export", "us_per_request": _traced(True, count)},
    ]
    for row in rows:
        row["us_per_request"] = round(row["us_per_request"], 1)
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
    parser.add_argument("--micro-only", action="store_true", help="only the in-process measurement")
    parser.add_argument("--count", type=int, default=20_000, help="requests per in-process measurement")
    args = parser.parse_args(argv)
    rounds = 1 if args.quick else args.rounds
    measure_s, warmup_s = (3.0, 1.0) if args.quick else (6.0, 2.0)
    connections = [MANY] if args.quick else [1, MANY]
    rows: list[dict[str, Any]] = []
    generator_name = ""
    with tempfile.TemporaryDirectory(prefix="obs-bench-") as tmp:
        work = Path(tmp)
        in_process = micro(work, args.count)
        if not args.micro_only:
            generator = pick_generator(args.generator, work)
            generator_name = generator.name
            with simulator(work) as sim, sink(work) as sink_server:
                bench = Bench(generator, warmup_s, measure_s, args.quick, work, sim)
                rows = run(bench, rounds, connections, sink_server)
    table = summary(rows) if rows else []
    result = {
        "machine": machine_info(),
        "generator": generator_name,
        "load_average_after": load_average(),
        "in_process": in_process,
        "summary": table,
        "rows": rows,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    print("| feature | CPU per request, in process |\n| --- | ---: |")
    for row in in_process:
        print(f"| {row['feature']} | {row['us_per_request']:.1f} us |")
    if table:
        print()
        print_table(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
