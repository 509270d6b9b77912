"""The router holds under faults: Redis dying under traffic, SIGTERM, upstream outages, a soak.

Every server is a real process on 127.0.0.1: ``redis-server``, the simulated upstream
(``adaptive-router simulate-upstream``) and router replicas (uvicorn on the factory
``adaptive_router.service:app_from_environment``, or ``adaptive-router serve``). Where the test
counts what was learned, latency evidence never decays (half-life 1e9 s) and nothing is forgotten
(``surprise_forget`` 1, ``stale_after`` 0), so that each answered request is one unit of evidence:
the shared view of every replica must then add up to the number of answers, no more, no less.
"""

from __future__ import annotations

import asyncio
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis

from adaptive_router.core import Learner
from adaptive_router.state import SharedState, decode_state, redis_client
from tests.process_fixtures import (
    CHAT_BODY,
    MODELS,
    Catalogue,
    Load,
    ProcessGroup,
    Served,
    router_env,
    scenario,
    wait_for,
)
from tests.redis_server import RedisServer
from tests.redis_server import redis_server_fixture as redis_server_fixture

FAST = "lab/a"
INTERVAL_MS = 200
PREFIX = "resilience-test"
SOAK_REQUESTS = 1_500
SOAK_RATE_PER_S = 75.0  # 1,500 requests in 20 s
RSS_GROWTH_LIMIT_KB = 50 * 1024  # memory must stay flat: a loose bound, not a speed assertion


def counting_env(
    catalogue: Catalogue, replica_id: str, redis_url: str | None, **extra: Any
) -> dict[str, str]:
    """A replica whose evidence is a plain count of answers (see the module docstring)."""
    settings: dict[str, Any] = {
        "LEARNING__REPLICA_ID": replica_id,
        "LEARNING__SYNC_INTERVAL_MS": str(INTERVAL_MS),
        "LEARNING__LATENCY_HALF_LIFE_S": "1e9",
        "LEARNING__SURPRISE_FORGET": "1",
        "LEARNING__STALE_AFTER": "0",
        "REDIS__PREFIX": PREFIX,
        **extra,
    }
    if redis_url is not None:
        settings["REDIS__URL"] = redis_url
    return router_env(catalogue, **settings)


def evidence(replica: Served) -> float:
    """The replica's view of how many latencies were observed, all models and replicas."""
    return float(sum(row["evidence"] for row in replica.get("/models")["data"]))


def requests_counted(replica: Served) -> int:
    total: int = replica.get("/metrics.json")["requests"]["total"]
    return total


def shared_up(replica: Served) -> bool:
    up: bool = replica.get("/ready")["shared_state"]["redis_up"]
    return up


def start_replicas(group: ProcessGroup, sim: Served, envs: dict[str, dict[str, str]]) -> list[Served]:
    replicas = [group.router(name, sim, env, wait=False) for name, env in envs.items()]
    for replica in replicas:
        replica.wait_ready()
    return replicas


def attempts(response: httpx.Response) -> list[tuple[str, str]]:
    return [(a["model"], a["outcome"]) for a in response.json()["routing"]["attempts"]]


# --- (a) Redis killed and restarted under traffic -----------------------------------------------


def test_redis_killed_and_restarted_under_traffic_loses_no_request_and_no_statistic(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    budget = {"BUDGET__GLOBAL_DAILY_USD": "1000", "BUDGET__REFRESH_INTERVAL_MS": str(INTERVAL_MS)}
    with ProcessGroup(tmp_path) as group:
        catalogue = Catalogue.write(tmp_path)
        sim = group.simulator(catalogue, scenario())
        envs = {name: counting_env(catalogue, name, redis_server.url, **budget) for name in ("r1", "r2")}
        r1, r2 = replicas = start_replicas(group, sim, envs)
        load = Load([r1.url, r2.url], count=3_000, rate_per_s=60.0).start()
        seen_down, seen_up = False, False
        try:
            assert load.wait_sent(60, limit_s=10)
            redis_server.kill()
            seen_down = wait_for(lambda: not any(shared_up(r) for r in replicas), limit_s=5)
            assert load.wait_sent(load.sent + 60, limit_s=10)  # both replicas learn while it is down
            redis_server.start()  # back on the same port, empty
            seen_up = wait_for(lambda: all(shared_up(r) for r in replicas), limit_s=5)
            assert load.wait_sent(load.sent + 40, limit_s=10)
        finally:
            load.stop()
            tally = load.join()
        print(f"Redis kill/restart under traffic: {tally.as_dict()}")
        assert seen_down, "/ready never showed shared_state.redis_up false while Redis was down"
        assert seen_up, "/ready never showed shared_state.redis_up true after Redis came back"
        assert tally.outcomes == {"200": tally.sent}  # every request answered, none failed
        assert sum(requests_counted(r) for r in replicas) == tally.sent
        # Each view holds every answer once: its own and the other's, the ones made while Redis
        # was down included (a lost one would leave it short, one counted twice over).
        expected = float(tally.sent)
        settled = wait_for(lambda: all(evidence(r) == pytest.approx(expected, abs=0.2) for r in replicas), 5)
        assert settled, {r.name: evidence(r) for r in replicas} | {"answers": tally.sent}
        for replica in replicas:
            assert replica.get("/ready")["shared_state"]["replicas"] == 1
        # Spend too: each replica's view of today's global spend is what both charged.
        spent = sum(r.get("/metrics.json")["spend_usd"] for r in replicas)
        assert spent > 0

        def budgets_agree() -> bool:
            views = [r.get("/ready")["budget"] for r in replicas]
            return all(v["unsynced_usd"] == 0 and v["global_usd"] == pytest.approx(spent) for v in views)

        assert wait_for(budgets_agree, limit_s=5), [r.get("/ready")["budget"] for r in replicas] + [spent]


# --- (b) SIGTERM ------------------------------------------------------------------------------------

SLOW_UPSTREAM = scenario(models={"*": {"ttft_s": 1.0, "tpot_s": 1e-5, "ttft_sigma": 0.0, "tail_prob": 0.0}})
IN_FLIGHT = 3


def sigterm_with_requests_in_flight(router: Served, sim: Served) -> tuple[list[int], int]:
    """Send IN_FLIGHT slow chats (~1 s each), SIGTERM the router once the upstream has them all,
    and return their statuses and the router's exit code."""
    with ThreadPoolExecutor(IN_FLIGHT) as pool:
        calls = [pool.submit(router.post, "/v1/chat/completions", CHAT_BODY) for _ in range(IN_FLIGHT)]
        assert wait_for(lambda: sim.get("/sim/stats")["requests_total"] == IN_FLIGHT, limit_s=5)
        router.terminate()
        statuses = [call.result(timeout=10).status_code for call in calls]
    return statuses, router.wait(timeout_s=10)


def lab_a_evidence(replica: Served) -> float:
    rows = {row["model"]: row["evidence"] for row in replica.get("/models")["data"]}
    return float(rows[FAST])


def test_sigterm_finishes_in_flight_requests_and_flushes_learning_to_redis(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    # One sync a minute: the in-flight answers can only reach Redis through the final push.
    catalogue = Catalogue.write(tmp_path)
    env = counting_env(catalogue, "term", redis_server.url, LEARNING__SYNC_INTERVAL_MS="60000")
    with ProcessGroup(tmp_path) as group:
        sim = group.simulator(catalogue, SLOW_UPSTREAM)
        router = group.router("term", sim, env)
        statuses, code = sigterm_with_requests_in_flight(router, sim)
        assert statuses == [200] * IN_FLIGHT
        assert code in (0, -signal.SIGTERM)  # it exited by itself (see the exit-code test below)
        with redis.Redis.from_url(redis_server.url) as client:
            blob = client.hget(f"{{{PREFIX}}}:learn:v1:states", "term")
        assert blob is not None, "nothing was pushed to Redis on shutdown"
        published = decode_state(blob)
        row = published.state.ids.index(FAST)
        assert published.state.sums["lat_n"].w[row] == pytest.approx(IN_FLIGHT, abs=1e-6)
        # A new process under the same replica id resumes it.
        resumed = group.router("term-2", sim, env)
        assert lab_a_evidence(resumed) == pytest.approx(IN_FLIGHT, abs=0.05)


def test_sigterm_without_redis_saves_learning_to_disk_and_a_restart_loads_it(tmp_path: Path) -> None:
    state = tmp_path / "state" / "learned.npz"
    catalogue = Catalogue.write(tmp_path)
    env = counting_env(catalogue, "disk", None, LEARNING__STATE_PATH=str(state))
    with ProcessGroup(tmp_path) as group:
        sim = group.simulator(catalogue, SLOW_UPSTREAM)
        router = group.serve("disk", sim, env)  # the documented command this time
        statuses, code = sigterm_with_requests_in_flight(router, sim)
        assert statuses == [200] * IN_FLIGHT
        assert code in (0, -signal.SIGTERM)
        assert state.is_file()
        restarted = group.router("disk-2", sim, env)
        assert lab_a_evidence(restarted) == pytest.approx(IN_FLIGHT, abs=0.05)


def test_sigterm_exit_code_is_zero(tmp_path: Path) -> None:
    catalogue = Catalogue.write(tmp_path)
    with ProcessGroup(tmp_path) as group:
        sim = group.simulator(catalogue, scenario())
        router = group.serve("exit", sim, router_env(catalogue))
        assert router.post("/v1/chat/completions", CHAT_BODY).status_code == 200
        router.terminate()
        assert router.wait(timeout_s=10) == 0


def test_shared_state_stop_returns_whenever_it_lands(redis_server: RedisServer) -> None:
    # In-process on purpose: the race (a stop landing within a few event-loop steps of a sync's
    # start) is rare per shutdown (~1 in 10-30 SIGTERMs to a replica syncing every 200 ms), and
    # only stepping through it makes it certain. Redis is a real server.
    async def stop_after(steps: int) -> bool:
        learner = Learner(MODELS, ["general"], np.ones(4), np.ones(4), np.ones(4))
        client = redis_client(redis_server.url, 50.0, 100.0)
        shared = SharedState(client, PREFIX, "stepper", learner, interval_s=0.05, ttl_s=3600.0)
        began = asyncio.Event()
        sync = shared.sync_once

        async def step() -> bool:
            began.set()
            return await sync()

        shared.sync_once = step  # type: ignore[method-assign]
        await shared.start()
        for _ in range(2):  # the timer's second step has just begun
            began.clear()
            await began.wait()
        for _ in range(steps):
            await asyncio.sleep(0)
        try:
            async with asyncio.timeout(0.5):
                await shared.stop()
            return True
        except TimeoutError:
            return False
        finally:
            timer = shared._timer
            if timer is not None:  # the hung timer, ended for good
                while not timer.task.done():
                    timer.task.cancel()
                    await asyncio.wait({timer.task}, timeout=0.1)
            await client.aclose()

    async def run() -> list[int]:
        return [steps for steps in range(6) if not await stop_after(steps)]

    assert asyncio.run(run()) == []  # the steps after which stop() hung


# --- (c) upstream outages ------------------------------------------------------------------------------


COOLDOWN_S = 0.5


def test_model_outage_opens_its_breaker_and_recovery_lets_a_probe_back_in(tmp_path: Path) -> None:
    warm = 10  # lab/a answers these, so the router knows it is the fastest
    events = [
        {"at_request": warm, "model": FAST, "action": "fail", "status": 500},
        {"at_request": warm + 4, "model": FAST, "action": "recover"},  # after two fail + fallback pairs
    ]
    catalogue = Catalogue.write(tmp_path)
    env = router_env(catalogue, UPSTREAM__BREAKER_FAILURES="2", UPSTREAM__BREAKER_COOLDOWN_S=str(COOLDOWN_S))
    with ProcessGroup(tmp_path) as group:
        sim = group.simulator(catalogue, scenario(events))
        router = group.router("outage", sim, env)
        for _ in range(warm):
            assert router.post("/v1/chat/completions", CHAT_BODY).json()["model"] == FAST
        for _ in range(2):  # the outage: every answer still 200, from the fallback
            response = router.post("/v1/chat/completions", CHAT_BODY)
            assert response.status_code == 200, response.text
            first, last = attempts(response)
            assert first == (FAST, "status_error") and last[1] == "ok" and last[0] != FAST
        assert router.get("/ready")["breakers"] == {FAST: "open"}
        response = router.post("/v1/chat/completions", CHAT_BODY)  # open: FAST is not even tried
        assert response.status_code == 200
        assert FAST not in [model for model, _ in attempts(response)]
        assert sim.get("/sim/stats")["errors"] == {FAST: {"500": 2}}
        time.sleep(COOLDOWN_S + 0.1)  # past the cool-down: one probe may go to FAST, recovered since
        response = router.post("/v1/chat/completions", CHAT_BODY)
        assert response.status_code == 200
        assert attempts(response) == [(FAST, "ok")]
        assert router.get("/ready")["breakers"] == {}
        assert router.get("/metrics.json")["breakers"] == {FAST: "closed"}


def test_every_model_failing_is_502_and_an_upstream_slower_than_every_timeout_is_504(tmp_path: Path) -> None:
    # The first request's four attempts fail; then every model recovers but takes 100x longer
    # (0.4-2 s) than an attempt may (0.15 s).
    events = [
        {"at_request": 0, "model": "*", "action": "fail", "status": 500},
        {"at_request": len(MODELS), "model": "*", "action": "recover"},
        {"at_request": len(MODELS), "model": "*", "action": "slow", "factor": 100},
    ]
    catalogue = Catalogue.write(tmp_path)
    env = router_env(catalogue, UPSTREAM__ATTEMPT_TIMEOUT_S="0.15")
    with ProcessGroup(tmp_path) as group:
        sim = group.simulator(catalogue, scenario(events))
        router = group.router("failing", sim, env)
        failed = router.post("/v1/chat/completions", CHAT_BODY)
        assert failed.status_code == 502, failed.text
        error = failed.json()["error"]
        assert error["code"] == "all_failed" and error["type"] == "upstream_error"
        assert sorted(attempts(failed)) == [(m, "status_error") for m in MODELS]
        assert all(m in error["message"] for m in MODELS)
        assert failed.headers["x-router-attempts"] == str(len(MODELS))
        timed_out = router.post("/v1/chat/completions", CHAT_BODY)
        assert timed_out.status_code == 504, timed_out.text
        assert timed_out.json()["error"]["code"] == "all_timed_out"
        assert sorted(attempts(timed_out)) == [(m, "timeout") for m in MODELS]
        assert router.http.get("/health").status_code == 200


# --- (d) a bounded soak ----------------------------------------------------------------------------------


# The routers are other processes: a socket the test's own clients leave to the garbage
# collector says nothing about them, and must not turn a passing soak into a failure.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_soak_two_replicas_answer_everything_with_flat_memory_and_count_each_outcome_once(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    catalogue = Catalogue.write(tmp_path)
    with ProcessGroup(tmp_path) as group:
        sim = group.simulator(catalogue, scenario())
        envs = {name: counting_env(catalogue, name, redis_server.url) for name in ("s1", "s2")}
        replicas = start_replicas(group, sim, envs)
        started = {r.name: r.rss_kb() for r in replicas}
        warm = Load([r.url for r in replicas], count=100, rate_per_s=100.0).start().join()
        warmed = {r.name: r.rss_kb() for r in replicas}
        tally = (
            Load([r.url for r in replicas], count=SOAK_REQUESTS, rate_per_s=SOAK_RATE_PER_S).start().join()
        )
        ended = {r.name: r.rss_kb() for r in replicas}
        sent = warm.sent + tally.sent
        print(f"soak: {tally.as_dict()}")
        for r in replicas:
            print(
                f"soak RSS {r.name}: start {started[r.name] / 1024:.1f} MB, after warm-up "
                f"{warmed[r.name] / 1024:.1f} MB, end {ended[r.name] / 1024:.1f} MB"
            )
        assert tally.sent == SOAK_REQUESTS
        assert tally.answered == tally.sent, tally.outcomes  # no request without an answer
        assert tally.outcomes == {"200": tally.sent}  # and, with no fault injected, all of them 200
        for r in replicas:
            assert ended[r.name] - warmed[r.name] < RSS_GROWTH_LIMIT_KB, (started, warmed, ended)
        assert sum(requests_counted(r) for r in replicas) == sent
        settled = wait_for(lambda: all(evidence(r) == pytest.approx(sent, abs=0.2) for r in replicas), 5)
        assert settled, {r.name: evidence(r) for r in replicas} | {"answers": sent}
