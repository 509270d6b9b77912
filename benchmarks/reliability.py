"""Reliability: a long soak through two replicas and Redis, with faults injected mid-run.

    python3 benchmarks/reliability.py            # 10,000 requests at 100/s, one server then a cluster
    python3 benchmarks/reliability.py --quick    # 2,000 requests each (~1.5 min in all)
    python3 benchmarks/reliability.py --topology cluster

Every server is its own process on 127.0.0.1, started here and stopped at the end: Redis (one
``redis-server``, or a 3-master Redis Cluster of them, ``cluster-enabled yes``, no replicas,
node timeout 1 s), the simulated upstream (``adaptive-router simulate-upstream``) and two router
replicas (uvicorn on ``adaptive_router.service:app_from_environment``), sharing what they learn
through Redis every 200 ms. A paced asyncio client sends chat completions round-robin to both
replicas at a steady rate, and, mid-run:

- Redis is killed (SIGKILL) at 30% of the requests and restarted, empty, at 45% (on the
  cluster: the master that holds the learning and budget scripts' slot; a second later the
  other masters answer CLUSTERDOWN to every command until it is back);
- the model the replicas route to (``lab/a``, by far the fastest) fails every call from about
  60% of the run to about 70%, then recovers (breakers: 5 failures, 2 s cool-down).

After the single-server run, a quick fuzz pass sends bad input (schemathesis against
``/openapi.json``, valid and invalid cases, when it is installed; hypothesis-generated JSON
bodies) and counts the answers.
Statistics lost is what was sent against what the replicas counted: the sum of their
``/metrics.json`` request totals, and each replica's shared view of the evidence (latency
evidence never decays and never forgets here, so each answered request is one unit of it).

Writes benchmarks/results/reliability.json and prints a table per topology (README, "Reliability").
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the process helpers live with the tests

from adaptive_router._bench import machine_info  # noqa: E402
from adaptive_router.state import hash_tag  # noqa: E402
from benchmarks._reliability_edges import print_edges, run_edges  # noqa: E402
from tests.process_fixtures import (  # noqa: E402
    Catalogue,
    Load,
    ProcessGroup,
    Served,
    Tally,
    router_env,
    scenario,
    start_redis,
    wait_for,
)
from tests.redis_server import start_cluster  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "reliability.json"
EDGES_RESULTS = RESULTS.with_name("reliability_edges.json")
FAST = "lab/a"
INTERVAL_MS = 200
RATE_PER_S = 100.0
REDIS_KILL_AT, REDIS_BACK_AT = 0.30, 0.45
OUTAGE_FROM, OUTAGE_TO = 0.60, 0.70
WARMUP = 200
FUZZ_EXAMPLES = 30  # schemathesis, per operation and mode
BODY_EXAMPLES = 200  # hypothesis bodies, per endpoint
PREFIX = "reliability"
TOPOLOGIES = ("single", "cluster")
PACKAGES = ["adaptive-router", "uvicorn", "starlette", "httpx", "redis", "schemathesis", "hypothesis"]


# --- the run -------------------------------------------------------------------------------------


def replica_env(catalogue: Catalogue, name: str, redis_url: str) -> dict[str, str]:
    return router_env(
        catalogue,
        LEARNING__REPLICA_ID=name,
        LEARNING__SYNC_INTERVAL_MS=str(INTERVAL_MS),
        LEARNING__LATENCY_HALF_LIFE_S="1e9",
        LEARNING__SURPRISE_FORGET="1",
        REDIS__URL=redis_url,
        REDIS__PREFIX=PREFIX,
        UPSTREAM__BREAKER_FAILURES="5",
        UPSTREAM__BREAKER_COOLDOWN_S="2",
    )


def shared_up(replica: Served) -> bool:
    up: bool = replica.get("/ready")["shared_state"]["redis_up"]
    return up


def outage_scenario(requests: int) -> dict[str, Any]:
    """lab/a answers in ~4 ms and the others in ~100 ms: far enough apart that the greedy policy
    settles on lab/a even on a busy machine. Before the outage each request is one upstream
    call, so the upstream's request counts track the run."""
    start, end = round(WARMUP + requests * OUTAGE_FROM), round(WARMUP + requests * OUTAGE_TO)
    steady = {"tpot_s": 1e-5, "ttft_sigma": 0.05, "tpot_sigma": 0.0, "tail_prob": 0.0}
    return scenario(
        [
            {"at_request": start, "model": FAST, "action": "fail", "status": 500},
            {"at_request": end, "model": FAST, "action": "recover"},
        ],
        models={"*": {**steady, "ttft_s": 0.1}, FAST: {"ttft_s": 0.004}},
    )


def inject_faults(
    load: Load, redis: Any, replicas: list[Served], requests: int, what: str
) -> list[dict[str, Any]]:
    """Kill ``redis`` (a server, or one cluster node) and bring it back at fixed points of the
    run; note what each replica saw."""
    faults: list[dict[str, Any]] = []
    load.wait_sent(round(requests * REDIS_KILL_AT), limit_s=requests / RATE_PER_S + 30)
    killed_at, t_kill = load.sent, time.monotonic()
    redis.kill()
    seen_down = wait_for(lambda: not any(shared_up(r) for r in replicas), limit_s=5)
    load.wait_sent(round(requests * REDIS_BACK_AT), limit_s=requests / RATE_PER_S + 30)
    redis.start()
    back_at, t_back = load.sent, time.monotonic()
    seen_up = wait_for(lambda: all(shared_up(r) for r in replicas), limit_s=30)
    faults.append(
        {
            "fault": f"{what} killed (SIGKILL), restarted empty",
            "requests": [killed_at, back_at],
            "down_s": round(t_back - t_kill, 1),
            "ready_showed_down": seen_down,
            "ready_showed_up_again": seen_up,
        }
    )
    return faults


def run_soak(work: Path, requests: int, topology: str) -> dict[str, Any]:
    """One soak: Redis as ``topology`` ("single" or "cluster"), the fuzz pass after "single"."""
    if topology == "cluster":
        cluster = start_cluster(work / "cluster")
        url, victim, stop = cluster.url, cluster.node_for(hash_tag(PREFIX)), cluster.stop
        what = "the cluster master holding the scripts' slot"
    else:
        redis = start_redis(work)
        url, victim, stop, what = redis.url, redis, redis.stop, "Redis"
    try:
        with ProcessGroup(work) as group:
            catalogue = Catalogue.write(work)
            sim = group.simulator(catalogue, outage_scenario(requests))
            replicas = [
                group.router(n, sim, replica_env(catalogue, n, url), wait=False) for n in ("r1", "r2")
            ]
            for replica in replicas:
                replica.wait_ready()
            urls = [r.url for r in replicas]
            rss: dict[str, dict[str, float]] = {r.name: {"start_mb": r.rss_kb() / 1024} for r in replicas}
            warm = Load(urls, count=WARMUP, rate_per_s=RATE_PER_S).start().join()
            for r in replicas:
                rss[r.name]["after_warmup_mb"] = r.rss_kb() / 1024
            load = Load(urls, count=requests, rate_per_s=RATE_PER_S).start()
            try:
                faults = inject_faults(load, victim, replicas, requests, what)
            finally:
                tally = load.join()
            for r in replicas:
                rss[r.name]["end_mb"] = r.rss_kb() / 1024
            faults.append(outage_report(sim, tally, requests))
            stats = statistics(replicas, warm, tally)
            described = replicas[0].get("/ready")["redis"]
            bad_inputs = fuzz_pass(replicas[0]) if topology == "single" else None
            return {
                "load": tally,
                "warmup": warm,
                "faults": faults,
                "stats": stats,
                "rss": rss,
                "bad": bad_inputs,
                "redis": described,
            }
    finally:
        stop()


def outage_report(sim: Served, tally: Tally, requests: int) -> dict[str, Any]:
    errors = sim.get("/sim/stats")["errors"].get(FAST, {})
    return {
        "fault": f"upstream outage: {FAST} (the model in use) answers 500 to every call",
        "requests": [round(requests * OUTAGE_FROM), round(requests * OUTAGE_TO)],
        "upstream_calls_failed": sum(errors.values()),
        "answered_by": dict(tally.models),
    }


def statistics(replicas: list[Served], warm: Tally, tally: Tally) -> dict[str, Any]:
    sent = warm.sent + tally.sent
    answered_ok = warm.ok + tally.ok

    def evidence(replica: Served) -> float:
        return float(sum(row["evidence"] for row in replica.get("/models")["data"]))

    wait_for(lambda: all(abs(evidence(r) - answered_ok) < 0.2 for r in replicas), limit_s=5)
    counted = {r.name: int(r.get("/metrics.json")["requests"]["total"]) for r in replicas}
    views = {r.name: round(evidence(r), 1) for r in replicas}
    return {
        "sent": sent,
        "answered_ok": answered_ok,
        "counted_by_replicas": counted,
        "counted_total": sum(counted.values()),
        "requests_lost_or_doubled": sent - sum(counted.values()),
        "evidence_per_replica_view": views,
        "evidence_lost_or_doubled": {name: round(answered_ok - v, 1) for name, v in views.items()},
    }


# --- bad input -------------------------------------------------------------------------------------


def fuzz_pass(replica: Served) -> dict[str, Any]:
    statuses: Counter[str] = Counter()
    tried = {
        "schemathesis": schemathesis_pass(replica, statuses),
        "hypothesis_bodies": body_pass(replica, statuses),
    }
    server_errors = sum(n for status, n in statuses.items() if status.startswith("5"))
    return {
        "tried": tried,
        "total": sum(tried.values()),
        "statuses": dict(sorted(statuses.items())),
        "5xx": server_errors,
    }


def schemathesis_pass(replica: Served, statuses: Counter[str]) -> int:
    try:
        import schemathesis
        from schemathesis.core.result import Ok
    except ImportError:
        print("schemathesis is not installed: skipping its pass (pip install schemathesis)", file=sys.stderr)
        return 0
    schema = schemathesis.openapi.from_url(replica.url + "/openapi.json")
    tried = 0
    for result in schema.get_all_operations():
        if not isinstance(result, Ok):
            raise RuntimeError(f"/openapi.json has an operation schemathesis cannot use: {result!r}")
        operation = result.ok()
        modes = [schemathesis.GenerationMode.POSITIVE]
        if operation.body:  # invalid variants of a body; operations without one have nothing to break
            modes.append(schemathesis.GenerationMode.NEGATIVE)
        tried += sum(_run_cases(replica, operation, mode, statuses) for mode in modes)
    return tried


def _run_cases(replica: Served, operation: Any, mode: Any, statuses: Counter[str]) -> int:
    from hypothesis import HealthCheck, given, settings

    tried = 0

    @settings(
        max_examples=FUZZ_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def call(case: Any) -> None:
        nonlocal tried
        tried += 1
        statuses[str(case.call(base_url=replica.url, timeout=10).status_code)] += 1

    call()
    return tried


def body_pass(replica: Served, statuses: Counter[str]) -> int:
    from hypothesis import strategies as st

    values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
        max_leaves=16,
    )
    paths = ("/v1/chat/completions", "/route", "/feedback")
    return sum(_send_bodies(replica, path, values, statuses) for path in paths)


def _send_bodies(replica: Served, path: str, values: Any, statuses: Counter[str]) -> int:
    from hypothesis import HealthCheck, given, settings

    tried = 0

    @settings(
        max_examples=BODY_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(body=values)
    def send(body: Any) -> None:
        nonlocal tried
        tried += 1
        content = json.dumps(body).encode()  # may hold Infinity: not JSON, must be refused
        response = replica.http.post(path, content=content, headers={"content-type": "application/json"})
        statuses[str(response.status_code)] += 1

    send()
    return tried


# --- report ----------------------------------------------------------------------------------------


def environment() -> dict[str, Any]:
    return machine_info(PACKAGES)


def summarise(run: dict[str, Any], requests: int, seconds: float) -> dict[str, Any]:
    tally: Tally = run["load"]
    failed = {k: v for k, v in tally.outcomes.items() if k != "200"}
    return {
        "redis": run["redis"],
        "requests_sent": tally.sent,
        "answered": tally.answered,
        "answered_200": tally.ok,
        "failed": failed,
        "failed_requests": tally.failed[:50],
        "faults": run["faults"],
        "faults_injected": len(run["faults"]),
        "faults_survived": len(run["faults"]) if not failed else 0,
        "bad_inputs": run["bad"],
        "statistics": run["stats"],
        "rss_mb": run["rss"],
        "warmup": run["warmup"].as_dict(),
        "load": tally.as_dict(),
        "config": {
            "requests": requests,
            "rate_per_s": RATE_PER_S,
            "replicas": 2,
            "sync_interval_ms": INTERVAL_MS,
            "redis_killed_at": REDIS_KILL_AT,
            "redis_back_at": REDIS_BACK_AT,
            "outage": [OUTAGE_FROM, OUTAGE_TO],
        },
        "wall_s": round(seconds, 1),
    }


def print_table(result: dict[str, Any]) -> None:
    stats, bad, rows = result["statistics"], result["bad_inputs"], []
    redis = result["redis"]
    nodes = ", ".join(redis.get("nodes", []))
    extra = (
        f"; state {redis.get('state')}, {redis.get('slots_covered')} slots served" if "state" in redis else ""
    )
    rows.append(("redis", f"{redis['topology']}: {nodes}{extra}"))
    injected, survived = result["faults_injected"], result["faults_survived"]
    rows.append(("requests sent", f"{result['requests_sent']:,} (+{result['warmup']['sent']} warm-up)"))
    rows.append(("answered", f"{result['answered']:,} ({result['answered_200']:,} with 200)"))
    rows.append(("failed (by status)", _pairs(result["failed"]) or "none"))
    for fault in result["faults"]:
        first, last = fault["requests"]
        rows.append(("fault injected", f"{fault['fault']}, requests {first:,}-{last:,}"))
    rows.append(
        ("faults survived", f"{survived} of {injected}" + (" (no client saw an error)" if survived else ""))
    )
    if bad is not None:
        tried = _pairs(bad["tried"])
        rows.append(("bad inputs tried", f"{bad['total']:,} ({tried}); 5xx: {bad['5xx']}"))
        rows.append(("bad input answers", _pairs(bad["statuses"])))
    lost = f"{stats['requests_lost_or_doubled']} (sent {stats['sent']:,}, counted {stats['counted_total']:,})"
    rows.append(("statistics lost (requests)", lost))
    evidence = _pairs(stats["evidence_lost_or_doubled"])
    rows.append(
        ("statistics lost (evidence)", f"{evidence} (each view should hold {stats['answered_ok']:,})")
    )
    for name, rss in result["rss_mb"].items():
        growth = rss["end_mb"] - rss["after_warmup_mb"]
        rows.append(
            (
                f"RSS {name}",
                f"start {rss['start_mb']:.1f} MB, after warm-up {rss['after_warmup_mb']:.1f} MB, "
                f"end {rss['end_mb']:.1f} MB ({growth:+.1f} MB)",
            )
        )
    width = max(len(label) for label, _ in rows)
    config = result["config"]
    print(
        f"reliability ({redis['topology']}): {config['requests']:,} requests at {RATE_PER_S:g}/s through "
        f"2 replicas + Redis ({result['wall_s']} s in all)"
    )
    for label, value in rows:
        print(f"  {label:<{width}}  {value}")


def _pairs(mapping: dict[str, Any]) -> str:
    return ", ".join(f"{key}: {value}" for key, value in mapping.items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 requests instead of 10,000")
    parser.add_argument("--requests", type=int, default=None)
    parser.add_argument("--topology", choices=[*TOPOLOGIES, "both"], default="both")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--edges-only", action="store_true", help="only the hostile-input scenario")
    args = parser.parse_args(argv)
    if args.edges_only:
        return edges(args.quick)
    requests = args.requests or (2_000 if args.quick else 10_000)
    topologies = TOPOLOGIES if args.topology == "both" else (args.topology,)
    runs: dict[str, Any] = {}
    for topology in topologies:
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix=f"reliability-{topology}-") as tmp:
            run = run_soak(Path(tmp), requests, topology)
        runs[topology] = summarise(run, requests, time.monotonic() - started)
        print_table(runs[topology])
    result = {"benchmark": "reliability", "environment": environment(), "topologies": runs}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")
    edges(args.quick)
    clean = all(
        not run["failed"]
        and run["statistics"]["requests_lost_or_doubled"] == 0
        and (run["bad_inputs"] is None or run["bad_inputs"]["5xx"] == 0)
        for run in runs.values()
    )
    return 0 if clean else 1


def edges(quick: bool) -> int:
    """The hostile-input scenario (benchmarks/_reliability_edges.py), written to its own file."""
    with tempfile.TemporaryDirectory(prefix="reliability-edges-") as tmp:
        result = {
            "benchmark": "reliability_edges",
            "environment": environment(),
            **run_edges(Path(tmp), quick),
        }
    print_edges(result)
    EDGES_RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {EDGES_RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
