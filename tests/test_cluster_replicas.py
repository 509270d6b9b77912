"""Two router processes on a real 3-master Redis Cluster: shared learning, cache, budgets, a lost master.

Every server is its own process on 127.0.0.1: three ``redis-server`` nodes with ``cluster-enabled
yes`` (free ports, bus ports chosen too, joined by ``redis-cli --cluster create``), the simulated
upstream, and two replicas (uvicorn on ``app_from_environment``) given only the cluster's
``redis+cluster://`` URL. The master that holds the scripts' slot (learning sync and budgets share
one hash tag) is then killed for 10 s under load and started again, empty.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from adaptive_router.state import hash_tag
from tests.process_fixtures import (
    CHAT_BODY,
    Catalogue,
    Load,
    ProcessGroup,
    Served,
    router_env,
    scenario,
    wait_for,
)
from tests.redis_server import RedisCluster, start_cluster

PREFIX = "cluster-replicas"
INTERVAL_MS = 200
DOWN_S = 10.0
RATE_PER_S = 20.0
LOAD_REQUESTS = 320  # 16 s at 20/s: the outage and the cluster's recovery happen inside it
KILL_AFTER = 40  # requests sent before the master dies
CACHED_PROMPTS = 30


@dataclass
class Setup:
    cluster: RedisCluster
    a: Served
    b: Served


def replica_env(catalogue: Catalogue, name: str, url: str) -> dict[str, str]:
    return router_env(
        catalogue,
        LEARNING__REPLICA_ID=name,
        LEARNING__SYNC_INTERVAL_MS=str(INTERVAL_MS),
        LEARNING__LATENCY_HALF_LIFE_S="1e9",
        LEARNING__SURPRISE_FORGET="1",
        REDIS__URL=url,
        REDIS__PREFIX=PREFIX,
        # A shared, busy 2-core machine: the 5 ms default is for a real network and idle CPUs.
        REDIS__OP_TIMEOUT_MS="250",
        REDIS__RETRY_AFTER_S="0.3",
        CACHE__ENABLED="true",
        BUDGET__GLOBAL_DAILY_USD="1000",
        BUDGET__REFRESH_INTERVAL_MS=str(INTERVAL_MS),
    )


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    work: Path = tmp_path_factory.mktemp("cluster-replicas")
    try:
        cluster = start_cluster(work / "redis")
    except RuntimeError as exc:
        if "not on PATH" in str(exc):
            pytest.skip(str(exc))
        raise
    try:
        with ProcessGroup(work) as group:
            catalogue = Catalogue.write(work)
            sim = group.simulator(catalogue, scenario())
            a, b = (
                group.router(n, sim, replica_env(catalogue, n, cluster.url), wait=False) for n in ("a", "b")
            )
            for replica in (a, b):
                replica.wait_ready()
            yield Setup(cluster, a, b)
    finally:
        cluster.stop()


def evidence(replica: Served) -> dict[str, float]:
    return {row["model"]: round(float(row["evidence"]), 6) for row in replica.get("/models")["data"]}


def ready(replica: Served) -> dict[str, Any]:
    body: dict[str, Any] = replica.get("/ready")
    return body


def chat(replica: Served, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    response = replica.post("/v1/chat/completions", body)
    assert response.status_code == 200, response.text
    return response.headers["x-router-cache"], response.json()


def cacheable(prompt: str) -> dict[str, Any]:
    return {**CHAT_BODY, "temperature": 0, "messages": [{"role": "user", "content": prompt}]}


def cache_keys(cluster: RedisCluster) -> list[list[str]]:
    return [cluster.keys(node, f"{PREFIX}:cache:*") for node in cluster.nodes]


def script_keys(cluster: RedisCluster, family: str) -> list[str]:
    return [key for node in cluster.nodes for key in cluster.keys(node, f"{hash_tag(PREFIX)}:{family}:*")]


def test_ready_names_the_cluster(setup: Setup) -> None:
    for replica in (setup.a, setup.b):
        topology = ready(replica)["redis"]
        assert topology["topology"] == "cluster" and topology["state"] == "ok"
        assert topology["nodes"] == sorted(f"127.0.0.1:{node.port}" for node in setup.cluster.nodes)
        assert topology["slots_covered"] == 16384


def test_learned_evidence_is_equal_on_both(setup: Setup) -> None:
    for _ in range(15):
        for replica in (setup.a, setup.b):
            chat(replica, CHAT_BODY)

    # Equal, and holding both replicas' requests: each missing the other's last push is equal too.
    def settled() -> bool:
        a = evidence(setup.a)
        return a == evidence(setup.b) and sum(a.values()) >= 30

    assert wait_for(settled, limit_s=5), (evidence(setup.a), evidence(setup.b))
    assert all(ready(r)["shared_state"]["replicas"] == 1 for r in (setup.a, setup.b))
    keys = script_keys(setup.cluster, "learn")
    assert len(keys) == 3 and len({setup.cluster.slot(k) for k in keys}) == 1


def cache_on_redis(replica: Served) -> bool:
    """Whether the replica's cache serves from Redis, after one cacheable request (a cache that
    fell back to memory, say on a slow start-up, tries Redis again on its next operation)."""
    chat(replica, cacheable("Are you on Redis?"))
    return bool(ready(replica)["cache"]["backend"] == "redis")


def test_an_answer_cached_by_one_replica_is_a_hit_on_the_other(setup: Setup) -> None:
    for replica in (setup.a, setup.b):
        assert wait_for(lambda replica=replica: cache_on_redis(replica), limit_s=10, poll_s=0.4)  # type: ignore[misc]
    stored = sum(map(len, cache_keys(setup.cluster)))
    body = cacheable("What is the capital of France?")
    assert chat(setup.a, body)[0] == "miss"
    assert wait_for(lambda: sum(map(len, cache_keys(setup.cluster))) > stored, limit_s=5)
    source, answer = chat(setup.b, body)
    assert source == "hit" and answer["routing"]["cached"] is True


def test_cache_entries_spread_over_every_master(setup: Setup) -> None:
    for i in range(CACHED_PROMPTS):
        chat((setup.a, setup.b)[i % 2], cacheable(f"Spread question number {i}"))
    assert wait_for(lambda: sum(map(len, cache_keys(setup.cluster))) >= CACHED_PROMPTS, limit_s=5)
    per_node = [len(keys) for keys in cache_keys(setup.cluster)]
    assert all(count > 0 for count in per_node), per_node


def test_spend_is_shared(setup: Setup) -> None:
    def spent(replica: Served) -> float:
        return float(ready(replica)["budget"]["global_usd"])

    assert wait_for(lambda: spent(setup.a) == spent(setup.b) > 0, limit_s=5), (spent(setup.a), spent(setup.b))
    assert all(ready(r)["budget"]["unsynced_usd"] == 0 for r in (setup.a, setup.b))
    keys = script_keys(setup.cluster, "budget")
    assert keys and {setup.cluster.slot(k) for k in keys} == {setup.cluster.slot(hash_tag(PREFIX))}


def test_a_master_lost_for_ten_seconds_costs_no_request_and_syncing_resumes(setup: Setup) -> None:
    a, b, cluster = setup.a, setup.b, setup.cluster
    spent_before = max(float(ready(r)["budget"]["global_usd"]) for r in (a, b))
    syncs_before = {r.name: ready(r)["shared_state"]["syncs"] for r in (a, b)}
    holder = cluster.node_for(hash_tag(PREFIX))  # learning and budget scripts, both families
    load = Load([a.url, b.url], count=LOAD_REQUESTS, rate_per_s=RATE_PER_S).start()
    try:
        assert load.wait_sent(KILL_AFTER, limit_s=30)
        holder.kill()
        saw_down = wait_for(
            lambda: not any(ready(r)["shared_state"]["redis_up"] for r in (a, b)), limit_s=DOWN_S
        )
        time.sleep(max(0.0, DOWN_S - 1.0))
        holder.start()  # empty: no persistence
        cluster.wait_ok()
    finally:
        tally = load.join()
    assert tally.outcomes == {"200": LOAD_REQUESTS}, tally.failed[:10]
    assert saw_down  # /ready said so while it lasted
    assert wait_for(lambda: all(ready(r)["shared_state"]["redis_up"] for r in (a, b)), limit_s=10)
    after = {r.name: ready(r)["shared_state"]["syncs"] for r in (a, b)}
    assert wait_for(
        lambda: all(ready(r)["shared_state"]["syncs"] >= after[r.name] + 2 for r in (a, b)), limit_s=5
    )
    assert all(after[name] > syncs_before[name] for name in after)
    # Both views hold every routed request again (the node came back empty: both republished).
    assert wait_for(lambda: evidence(a) == evidence(b), limit_s=5), (evidence(a), evidence(b))
    spent = [float(ready(r)["budget"]["global_usd"]) for r in (a, b)]
    assert min(spent) >= spent_before
    assert wait_for(lambda: len({float(ready(r)["budget"]["global_usd"]) for r in (a, b)}) == 1, limit_s=5)
    assert ready(a)["redis"]["state"] == "ok"
