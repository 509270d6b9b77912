"""``adaptive-router``: the command line. Flags become settings; settings build the parts.

    adaptive-router models --mode speed
    adaptive-router route "Write a haiku" --dry-run --priority cost --max-latency 2000
    adaptive-router benchmark --iterations 20000 --models 300
    adaptive-router serve --port 8000
    adaptive-router simulate-upstream --port 9000

Exit codes: 0 success, 1 a routing or upstream failure, 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from .errors import ConfigError, NoEligibleModel, RequestError, RouterError
from .settings import Settings, load_settings

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _weights(text: str) -> tuple[float, float, float]:
    parts = text.split(",")
    if len(parts) != 3:
        raise argparse.ArgumentTypeError("weights are three numbers: latency,cost,quality")
    values = tuple(_non_negative_float(p) for p in parts)
    if sum(values) <= 0:
        raise argparse.ArgumentTypeError("weights must not all be zero")
    return values  # type: ignore[return-value]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="adaptive-router", description="Route each LLM request to the best model.")
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="settings YAML (default: $ROUTER_SETTINGS_FILE, "
        "else ./settings.yaml if present, else the embedded defaults)",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    models = sub.add_parser("models", help="the catalogue ranked for a mode")
    models.add_argument(
        "--mode", default=None, help="speed, cost, quality, balanced, or a mode from settings"
    )
    models.add_argument("--limit", type=_positive_int, default=None, help="show the first N")
    models.add_argument("--json", action="store_true")

    route = sub.add_parser("route", help="route one prompt (with --dry-run: the decision only)")
    route.add_argument("prompt")
    route.add_argument("--dry-run", action="store_true", help="decide without calling any model")
    route.add_argument("--priority", "--mode", dest="mode", default=None)
    route.add_argument("--weights", type=_weights, default=None, metavar="L,C,Q")
    route.add_argument("--max-latency", type=_non_negative_float, default=None, metavar="MS")
    route.add_argument("--max-cost", type=_non_negative_float, default=None, metavar="USD")
    route.add_argument("--max-tokens", type=_positive_int, default=None)
    route.add_argument("--capability", action="append", default=[], help="required, e.g. tools, vision")
    route.add_argument("--allow", action="append", default=[], metavar="GLOB")
    route.add_argument("--deny", action="append", default=[], metavar="GLOB")
    route.add_argument("--json", action="store_true")

    bench = sub.add_parser("benchmark", help="time the decision in-process")
    bench.add_argument("--iterations", type=_positive_int, default=20_000)
    bench.add_argument("--models", type=_positive_int, default=None, help="synthetic catalogue of N models")
    bench.add_argument("--policy", choices=["ucb", "thompson", "softmax", "greedy"], default=None)
    bench.add_argument("--json", action="store_true")

    _add_service_commands(sub)
    return parser


def _add_service_commands(sub: Any) -> None:
    serve = sub.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.add_argument("--workers", type=_positive_int, default=None)

    sim = sub.add_parser("simulate-upstream", help="run the simulated OpenAI-compatible upstream")
    sim.add_argument("--scenario", default=None, metavar="FILE")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=9000)


def _settings(path: str | None) -> Settings:
    from pathlib import Path

    if path is None and Path("settings.yaml").is_file():
        path = "settings.yaml"
    return load_settings(path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    commands: dict[str, Callable[[argparse.Namespace, Settings], int]] = {
        "models": cmd_models,
        "route": cmd_route,
        "benchmark": cmd_benchmark,
        "serve": cmd_serve,
        "simulate-upstream": cmd_simulate_upstream,
    }
    try:
        settings = _settings(args.config)
        return commands[args.command](args, settings)
    except (ConfigError, RequestError) as exc:
        print(f"adaptive-router: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except NoEligibleModel as exc:
        print(f"adaptive-router: {exc} (constraint: {exc.constraint})", file=sys.stderr)
        return EXIT_FAILED
    except RouterError as exc:
        print(f"adaptive-router: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


# --- models ------------------------------------------------------------------------------


def cmd_models(args: argparse.Namespace, settings: Settings) -> int:
    from .router import Router

    router = Router.from_settings(settings)
    rows = router.model_table(args.mode)
    if args.limit:
        rows = rows[: args.limit]
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    columns = [
        "rank",
        "model",
        "score",
        "latency",
        "cost",
        "quality",
        "est_latency_ms",
        "est_cost_usd",
        "quality_est",
        "success",
        "evidence",
        "prompt_per_m",
        "completion_per_m",
        "context",
    ]
    _print_table(f"{router.catalogue} ranked for mode {rows[0]['mode'] if rows else ''}", columns, rows)
    return EXIT_OK


# --- route -------------------------------------------------------------------------------


def cmd_route(args: argparse.Namespace, settings: Settings) -> int:
    from .router import Router, RouteRequest

    router = Router.from_settings(settings)
    request = RouteRequest(
        prompt=args.prompt,
        mode=args.mode,
        weights=args.weights,
        max_latency_ms=args.max_latency,
        max_cost_usd=args.max_cost,
        max_tokens=args.max_tokens,
        capabilities=frozenset(args.capability),
        allow=tuple(args.allow),
        deny=tuple(args.deny),
    )
    if not args.dry_run:
        return _route_live(settings, request, args)
    decision = router.decide(request)
    if args.json:
        print(json.dumps(decision.to_dict(), indent=2))
        return EXIT_OK
    print(f"model:     {decision.model}")
    print(f"fallbacks: {', '.join(decision.fallbacks) or '-'}")
    print(f"reason:    {decision.reason}")
    print(
        f"profile:   task={decision.profile.task} prompt_tokens={decision.profile.prompt_tokens} "
        f"expected_output_tokens={decision.profile.expected_output_tokens}"
    )
    print(f"decided in {decision.decision_us:.1f} us over {decision.eligible} eligible models")
    columns = [
        "model",
        "score",
        "latency_term",
        "cost_term",
        "quality_term",
        "exploration",
        "latency_s",
        "cost_usd",
    ]
    _print_table("ranking", columns, [_candidate_row(c) for c in decision.candidates])
    return EXIT_OK


def _candidate_row(candidate: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in asdict(candidate).items()}


def _route_live(settings: Settings, request: Any, args: argparse.Namespace) -> int:
    from .service import complete_once

    return complete_once(settings, request, args.prompt, args.max_tokens, args.json)


# --- benchmark ---------------------------------------------------------------------------


def cmd_benchmark(args: argparse.Namespace, settings: Settings) -> int:
    from .bench import router_for, sample_requests, time_decisions
    from .catalogue import load_catalogue
    from .router import Router

    if args.models is not None:
        router = router_for(settings, args.models, args.policy)
    else:
        router = Router.from_settings(
            settings, load_catalogue(settings.catalogue.source, settings.catalogue.overlay)
        )
    timing = time_decisions(router, sample_requests(), args.iterations)
    result = {"models": len(router.catalogue), "policy": router.policy.name, **timing.as_dict()}
    if args.json:
        print(json.dumps(result, indent=2))
        return EXIT_OK
    columns = ["models", "policy", "p50_us", "p95_us", "p99_us", "mean_us", "per_second", "iterations"]
    _print_table(
        "decision time (in-process, profile + masks + score + exploration + ranking)",
        columns,
        [{k: (round(v, 1) if isinstance(v, float) else v) for k, v in result.items()}],
    )
    return EXIT_OK


# --- service -------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from .service import serve

    server = settings.server.model_copy(
        update={
            k: v
            for k, v in (("host", args.host), ("port", args.port), ("workers", args.workers))
            if v is not None
        }
    )
    serve(settings.model_copy(update={"server": server}))
    return EXIT_OK


def cmd_simulate_upstream(args: argparse.Namespace, settings: Settings) -> int:
    from .catalogue import load_catalogue
    from .simulator import load_scenario, run_simulator, sim_models_from_catalogue

    catalogue = load_catalogue(settings.catalogue.source, settings.catalogue.overlay)
    scenario = load_scenario(args.scenario) if args.scenario else None
    print(
        f"simulated upstream for {len(catalogue)} models on http://{args.host}:{args.port}/v1",
        file=sys.stderr,
    )
    run_simulator(sim_models_from_catalogue(catalogue), scenario, args.host, args.port)
    return EXIT_OK


# --- output --------------------------------------------------------------------------------


def _print_table(title: str, columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # the 'cli' extra is absent: say so, and still answer in JSON
        print("(install adaptive-router[cli] for tables; printing JSON)", file=sys.stderr)
        print(json.dumps([{c: r.get(c) for c in columns} for r in rows], indent=2))
        return
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="left" if column == "model" else "right")
    for row in rows:
        table.add_row(*(str(row.get(c, "")) for c in columns))
    Console(width=200).print(table)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
