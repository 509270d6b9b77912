"""``adaptive-router``: the command line. Flags become settings; settings build the parts.

    adaptive-router models --mode speed          # also: explore --mode speed (the published spelling)
    adaptive-router route "Write a haiku" --dry-run --priority speed --max-ttft 600
    adaptive-router benchmark --iterations 20000 --models 300   # --requests is the same flag
    adaptive-router serve --port 8000
    adaptive-router simulate-upstream --port 9000
    adaptive-router replay logs/traffic.jsonl --policy greedy --mode cost
    adaptive-router replay ../shared/data/outcomes/outcomes.csv --source routerbench --mode quality

Exit codes: 0 success, 1 a routing or upstream failure, 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from ._cli_output import as_dict, by_shadow, interval_text, json_ratio, print_table, progress, waiting
from ._errors import ConfigError, NoEligibleModel, RequestError, RouterError
from ._settings import Settings, load_settings

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


def _port(text: str) -> int:
    """A TCP port, 0 (any free one) to 65535, as ``server.port`` takes."""
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"must be a port from 0 to 65535, got {text}")
    return int(text)


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


_CONFIG_HELP = (
    "settings YAML (default: $ROUTER_SETTINGS_FILE, from the environment or ./.env, "
    "else ./settings.yaml if present, else the embedded defaults)"
)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="adaptive-router", description="Route each LLM request to the best model.")
    parser.add_argument("--config", metavar="FILE", help=_CONFIG_HELP)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    models = sub.add_parser(
        "models", aliases=["explore"], help="the catalogue ranked for a mode (alias: explore)"
    )
    models.add_argument(
        "--mode", default=None, help="speed, cost, quality, balanced, or a mode from settings"
    )
    models.add_argument("--limit", type=_positive_int, default=None, help="show the first N")
    models.add_argument("--json", action="store_true")

    route = sub.add_parser("route", help="route one prompt (with --dry-run: the decision only)")
    route.add_argument("prompt", help="the user message")
    route.add_argument("--dry-run", action="store_true", help="decide without calling any model")
    route.add_argument("--priority", "--mode", dest="mode", default=None, help="speed, cost, quality, ...")
    route.add_argument("--weights", type=_weights, default=None, metavar="L,C,Q", help="e.g. 1,3,1")
    route.add_argument(
        "--max-latency", type=_non_negative_float, metavar="MS", help="p90 of the whole answer"
    )
    route.add_argument(
        "--max-ttft", type=_non_negative_float, default=None, metavar="MS", help="time to first token"
    )
    route.add_argument("--max-cost", type=_non_negative_float, metavar="USD", help="at max_tokens")
    route.add_argument("--max-tokens", type=_positive_int, metavar="N", help="answer length cap")
    route.add_argument("--capability", action="append", default=[], help="required, e.g. tools, vision")
    route.add_argument("--allow", action="append", default=[], metavar="GLOB", help="only these model ids")
    route.add_argument(
        "--deny", action="append", default=[], metavar="GLOB", help="never these, e.g. '*:free'"
    )
    route.add_argument("--json", action="store_true", help="every field, as JSON")

    bench = sub.add_parser("benchmark", help="time the decision in-process")
    bench.add_argument("--iterations", "--requests", type=_positive_int, default=20_000)
    bench.add_argument("--models", type=_positive_int, default=None, help="synthetic catalogue of N models")
    bench.add_argument("--policy", choices=["ucb", "thompson", "softmax", "greedy"], default=None)
    bench.add_argument("--json", action="store_true")

    _add_service_commands(sub)
    _add_replay_command(sub)
    _add_export_command(sub)
    # --config after the subcommand too; SUPPRESS keeps a value given before it.
    for command in {id(p): p for p in sub.choices.values()}.values():
        command.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help=_CONFIG_HELP)
    return parser


def _add_service_commands(sub: Any) -> None:
    serve = sub.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--host", default=None, help="address to bind (server.host, default 127.0.0.1)")
    serve.add_argument("--port", type=_port, default=None, help="server.port (default 8000)")
    serve.add_argument(
        "--workers", type=_positive_int, default=None, help="worker processes (server.workers)"
    )

    sim = sub.add_parser("simulate-upstream", help="run the simulated OpenAI-compatible upstream")
    sim.add_argument("--scenario", default=None, metavar="FILE", help="YAML or JSON (examples/scenario.yaml)")
    sim.add_argument("--host", default="127.0.0.1", help="address to bind")
    sim.add_argument("--port", type=_port, default=9000, help="default 9000")


def _settings_path(path: str | None) -> str | None:
    from pathlib import Path

    from ._settings import settings_file_from_env

    if path is None and not settings_file_from_env() and Path("settings.yaml").is_file():
        path = "settings.yaml"
    return str(Path(path).resolve()) if path is not None else None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    commands: dict[str, Callable[[argparse.Namespace, Settings], int]] = {
        "models": cmd_models,
        "explore": cmd_models,
        "route": cmd_route,
        "benchmark": cmd_benchmark,
        "serve": cmd_serve,
        "simulate-upstream": cmd_simulate_upstream,
        "replay": cmd_replay,
        "export-preferences": cmd_export_preferences,
    }
    try:
        args.settings_path = _settings_path(args.config)
        settings = load_settings(args.settings_path)
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
    from .core._router import Router

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
    catalogue = router.catalogue
    source = catalogue.source or "in memory"
    title = f"{len(catalogue)} models ({source}) ranked for mode {args.mode or 'default'}"
    print_table(title, columns, rows)
    return EXIT_OK


# --- route -------------------------------------------------------------------------------


def cmd_route(args: argparse.Namespace, settings: Settings) -> int:
    from .core._decision import RouteRequest
    from .core._router import Router

    router = Router.from_settings(settings)
    request = RouteRequest(
        prompt=args.prompt,
        mode=args.mode,
        weights=args.weights,
        max_latency_ms=args.max_latency,
        max_ttft_ms=args.max_ttft,
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
    print_table("ranking", columns, [_candidate_row(c) for c in decision.candidates])
    return EXIT_OK


def _candidate_row(candidate: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in asdict(candidate).items()}


def _route_live(settings: Settings, request: Any, args: argparse.Namespace) -> int:
    import contextlib
    import io

    from .pipeline._runtime import complete_once

    answer = io.StringIO()  # printed once the spinner is gone, so the two never interleave
    with waiting("routing and waiting for the answer"), contextlib.redirect_stdout(answer):
        code = complete_once(settings, request, args.prompt, args.max_tokens, args.json)
    sys.stdout.write(answer.getvalue())
    return code


def cmd_benchmark(args: argparse.Namespace, settings: Settings) -> int:
    from ._bench import router_for, sample_requests, time_decisions
    from .core._router import Router

    if args.models is not None:
        router = router_for(settings, args.models, args.policy)
    else:
        router = Router.from_settings(settings)
    timing = time_decisions(router, sample_requests(), args.iterations)
    result = {"models": len(router.catalogue), "policy": router.policy.name, **timing.as_dict()}
    if args.json:
        print(json.dumps(result, indent=2))
        return EXIT_OK
    columns = ["models", "policy", "p50_us", "p95_us", "p99_us", "mean_us", "per_second", "iterations"]
    print_table(
        "decision time (in-process, profile + masks + score + exploration + ranking)",
        columns,
        [{k: (round(v, 1) if isinstance(v, float) else v) for k, v in result.items()}],
    )
    return EXIT_OK


# --- service -------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    import os

    from ._settings import SETTINGS_FILE_ENV
    from .service._app import serve

    if args.settings_path and (args.workers or settings.server.workers) > 1:
        os.environ[SETTINGS_FILE_ENV] = args.settings_path  # worker processes rebuild settings from it

    flags = {"host": args.host, "port": args.port, "workers": args.workers}
    given = {k: v for k, v in flags.items() if v is not None}
    for key, value in given.items():  # as the environment: a reload and the workers keep them
        os.environ[f"ROUTER_SERVER__{key.upper()}"] = str(value)
    server = settings.server.model_copy(update=given)
    serve(settings.model_copy(update={"server": server}))
    return EXIT_OK


def cmd_simulate_upstream(args: argparse.Namespace, settings: Settings) -> int:
    from .core._router import catalogue_from_settings
    from .simulator._app import run_simulator, sim_models_from_catalogue
    from .simulator._scenario import load_scenario

    catalogue = catalogue_from_settings(settings)
    scenario = load_scenario(args.scenario) if args.scenario else None
    print(
        f"simulated upstream for {len(catalogue)} models on http://{args.host}:{args.port}/v1",
        file=sys.stderr,
    )
    run_simulator(sim_models_from_catalogue(catalogue), scenario, args.host, args.port)
    return EXIT_OK


# --- replay --------------------------------------------------------------------------------


def _add_replay_command(sub: Any) -> None:
    replay = sub.add_parser(
        "replay",
        help="off-policy estimates on a traffic log, or the router run through an outcome table",
        description="LOG_OR_TABLE is a traffic log (JSON lines; rotated files are read too) or an "
        "outcome table (CSV: source,prompt_id,model,quality,cost_usd,...).",
    )
    replay.add_argument("path", metavar="LOG_OR_TABLE")
    replay.add_argument("--policy", choices=["ucb", "thompson", "softmax", "greedy"], default=None)
    replay.add_argument(
        "--mode", default=None, help="speed, cost, quality, balanced, or a mode from settings"
    )
    replay.add_argument("--weights", type=_weights, default=None, metavar="L,C,Q")
    replay.add_argument("--temperature", type=_non_negative_float, default=None, help="softmax temperature")
    replay.add_argument(
        "--limit", type=_positive_int, default=None, help="outcome tables: the first N prompts"
    )
    replay.add_argument("--seed", type=int, default=0, help="outcome tables: shuffle and exploration seed")
    replay.add_argument("--source", default=None, help="outcome tables: which source (default: the first)")
    replay.add_argument(
        "--prompts", default=None, metavar="FILE", help="default: prompts.jsonl beside the table"
    )
    replay.add_argument(
        "--latency",
        default=None,
        metavar="FILE",
        help="measured latencies (llmperf CSV); default: ../latency/llmperf_requests.csv beside the table",
    )
    replay.add_argument("--curve", action="store_true", help="outcome tables: add the cost-quality curve")
    replay.add_argument(
        "--explore-by-shadow",
        action="store_true",
        default=None,
        help="outcome tables: exploratory picks go beside the answer, judged by the table's truth, "
        "and their cost is counted (evaluation.shadow.explore)",
    )
    replay.add_argument("--json", action="store_true")


def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    from ._errors import ReplayError

    try:
        if args.temperature is not None and args.temperature <= 0:
            raise ValueError("--temperature must be > 0")
        if _is_traffic_log(args.path):
            return _replay_log(args, settings)
        return _replay_table(args, settings)
    except (ReplayError, ValueError) as exc:
        print(f"adaptive-router replay: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _is_traffic_log(path: str) -> bool:
    """JSON lines (or only rotated backups present) is a traffic log; anything else a CSV table."""
    from pathlib import Path

    from ._errors import ReplayError

    file = Path(path)
    if not file.exists():
        if Path(f"{path}.1").exists():
            return True
        raise ReplayError(f"{path}: no such file")
    if file.is_dir():
        raise ReplayError(f"{path}: is a directory")
    try:
        with file.open("rb") as handle:
            head = handle.read(4096).lstrip()
    except OSError as exc:
        raise ReplayError(f"{path}: cannot read: {exc.strerror}") from exc
    return head.startswith(b"{") or (not head and file.suffix != ".csv")


def _replay_log(args: argparse.Namespace, settings: Settings) -> int:
    from .core._setup import scales_from_settings
    from .offline._replay import RewardSpec, TargetPolicy, evaluate_many, logged_value, read_log

    if args.policy == "thompson":
        raise ValueError("thompson has no action probabilities to replay; choose greedy, softmax or ucb")
    temperature = args.temperature or settings.exploration.temperature
    names = [args.policy] if args.policy else ["greedy", "softmax", "ucb"]
    targets = [TargetPolicy(n, args.mode, args.weights, temperature) for n in names]
    modes = {name: w.normalised() for name, w in settings.routing.modes.items()}
    scales = scales_from_settings(settings.routing)
    log = read_log(args.path)
    estimates = evaluate_many(log, targets, RewardSpec(), modes=modes, scales=scales)
    logged = logged_value(log)
    if args.json:
        print(json.dumps({"logged": as_dict(logged), "targets": [e.to_dict() for e in estimates]}, indent=2))
        return EXIT_OK
    rows = [{"target": "logged policy (on-policy)", "ips": interval_text(logged), "n": estimates[0].n}]
    rows += [
        {
            "target": e.target,
            "ips": interval_text(e.ips) if e.ips_in_range else "out of range (see below)",
            "snips": interval_text(e.snips),
            "dr": interval_text(e.dr),
            "ess": round(e.ess, 1),
            "agreement": round(e.agreement, 3),
            "n": e.n,
        }
        for e in estimates
    ]
    title = f"off-policy estimates of mean reward, 95% normal intervals ({len(log.files)} file(s))"
    print_table(title, ["target", "ips", "snips", "dr", "ess", "agreement", "n"], rows)
    print(f"reward: {estimates[0].reward}")
    for e in estimates:
        for warning in e.warnings:
            print(f"warning: {e.target}: {warning}")
    skipped = {k: v for k, v in estimates[0].skipped.items() if v}
    if skipped:
        print("skipped: " + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in skipped.items()))
    return EXIT_OK


def _replay_table(args: argparse.Namespace, settings: Settings) -> int:
    from pathlib import Path

    from .offline._curves import cost_quality_curve
    from .offline._outcomes import load_outcomes, replay_outcomes, table_sources

    if args.source is None:
        sources = table_sources(args.path)
        if len(sources) > 1:
            others = ", ".join(sources[1:])
            print(
                f"using source {sources[0]!r} (also in the table: {others}; pick with --source)",
                file=sys.stderr,
            )
    table = load_outcomes(args.path, args.prompts, source=args.source)
    latency = args.latency
    beside = Path(args.path).resolve().parent.parent / "latency" / "llmperf_requests.csv"
    if latency is None and beside.is_file():
        latency = beside
    policy = args.policy or settings.exploration.policy
    n = min(args.limit or len(table), len(table))
    runs = 1 + (8 if args.curve else 0)
    with progress(n * runs, enabled=n * runs > 2_000) as advance:
        report = replay_outcomes(
            table,
            None,
            settings,
            policy,
            args.mode,
            args.seed,
            True,
            args.limit,
            latency,
            weights=args.weights,
            temperature=args.temperature,
            progress=lambda d, t: advance(d),
            shadow_explore=args.explore_by_shadow,
        )
        curve = []
        if args.curve:
            curve = cost_quality_curve(
                table,
                settings,
                policy,
                seed=args.seed,
                limit=args.limit,
                latency=latency,
                progress=lambda d, t: advance(n + d),
                shadow_explore=args.explore_by_shadow,
            )
    if args.json:
        data = report.to_dict()
        data["curve"] = [
            {k: json_ratio(v) if k.endswith("_ratio") else v for k, v in as_dict(p).items()} for p in curve
        ]
        print(json.dumps(data, indent=2))
        return EXIT_OK
    s = report.summary()
    title = (
        f"{s['source']}: {s['prompts']} prompts in one shuffled pass (seed {s['seed']}), "
        f"policy {s['policy']}, mode {s['mode']}; reference {s['reference']}"
    )
    columns = ["name", "quality", "cost_usd", "latency_s", "utility", "quality_vs_ref", "cost_vs_ref"]
    print_table(title, columns, report.rows())
    cost = (
        "n/a of its cost: the table has no costs"
        if s["cost_ratio"] is None
        else f"{s['cost_ratio']:.1%} of its cost"
    )
    quality = "n/a" if s["quality_ratio"] is None else f"{s['quality_ratio']:.1%}"
    print(
        f"router: {quality} of {s['reference']}'s quality at {cost}; "
        f"quality regret vs best fixed {s['regret_vs_best_fixed']:+.4f}, "
        f"vs oracle {s['regret_vs_oracle']:+.4f}; "
        f"explored on the answer {s['explored']} times{by_shadow(s)}; "
        f"{s['dropped']} prompts dropped (incomplete rows)"
    )
    if curve:
        rows = [
            {
                "quality_weight": p.quality_weight,
                "quality": round(p.quality, 4),
                "cost_usd": round(p.cost_usd, 4),
                "quality_vs_ref": json_ratio(p.quality_ratio),
                "cost_vs_ref": json_ratio(p.cost_ratio),
            }
            for p in curve
        ]
        print_table("cost-quality curve (latency:cost weights 1:2)", list(rows[0]), rows)
    return EXIT_OK


# --- export-preferences --------------------------------------------------------------------


def _add_export_command(sub: Any) -> None:
    export = sub.add_parser(
        "export-preferences",
        help="preference pairs (DPO triples) from a traffic log's judged or fed-back answers",
        description="Writes one JSON object per line: {prompt, chosen, rejected, chosen_model, "
        "rejected_model, scores}. The log must hold prompt and answer text (server.log_prompts and "
        "server.log_answers); rotated files are read too.",
    )
    export.add_argument("log", metavar="LOG")
    export.add_argument("--out", required=True, metavar="FILE", help="where to write the pairs (JSON lines)")
    export.add_argument(
        "--min-margin",
        type=_non_negative_float,
        default=0.1,
        help="least score gap between two logged answers to the same prompt (default 0.1)",
    )


def cmd_export_preferences(args: argparse.Namespace, settings: Settings) -> int:
    from .offline._preferences import preference_pairs, write_pairs
    from .offline._replay import log_files

    try:
        files = log_files(args.log)
        pairs = preference_pairs(files, min_margin=args.min_margin)
        count = write_pairs(pairs, args.out)
    except (OSError, RouterError) as exc:  # a log without prompts or answers is a ReplayError
        print(f"adaptive-router export-preferences: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"wrote {count} preference pairs to {args.out} (from {len(files)} file(s))", file=sys.stderr)
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
