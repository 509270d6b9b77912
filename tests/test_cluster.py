"""Redis Cluster and Sentinel: naming them, and the cache, shared learning and budgets on a real cluster.

The cluster tests share one 3-master cluster (Debian ``redis-server`` with ``cluster-enabled
yes`` on free loopback ports, bus ports chosen too); the last one kills the master that holds
the scripts' slot and brings it back empty.
"""

from __future__ import annotations

import asyncio
import calendar
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster as ClusterClient

from adaptive_router import ConfigError, Learner, Settings
from adaptive_router._settings import CacheSettings, RedisSettings
from adaptive_router.state import (
    Budget,
    FailoverCache,
    MemoryCache,
    RedisCache,
    SharedState,
    build_cache,
    describe,
    hash_tag,
    parse_redis_url,
    redis_client,
    redis_topology,
)
from tests.redis_server import RedisCluster, start_cluster

PREFIX = "cluster-test"
NOON = float(calendar.timegm((2025, 3, 14, 12, 0, 0)))
IDS = ("a/x", "b/y", "c/z")
TASKS = ("code", "general")


def run(main: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(main())  # type: ignore[arg-type]


# --- naming a cluster or a sentinel-managed primary (no server needed) -------------------------


@pytest.mark.parametrize(
    ("settings", "url", "kind"),
    [
        ({"url": "redis://127.0.0.1:7000/0"}, "redis://127.0.0.1:7000/0", "single"),
        ({"url": "redis+cluster://a:7000,b:7001"}, "redis+cluster://a:7000,b:7001", "cluster"),
        ({"url": "redis://a:7000", "cluster": True}, "redis+cluster://a:7000", "cluster"),
        ({"cluster": True, "nodes": ["a:7000", "b:7001"]}, "redis+cluster://a:7000,b:7001", "cluster"),
        (
            {"url": "redis://u:pw@a:7000", "cluster": True, "nodes": ["b:1"]},
            "redis+cluster://u:pw@a:7000,b:1",
            "cluster",
        ),
        ({"url": "redis://a:7000/0?cluster=true"}, "redis://a:7000/0?cluster=true", "cluster"),
        (
            {"sentinel": {"master": "main", "nodes": ["s1:26379", "s2:26379"], "db": 2}},
            "redis+sentinel://s1:26379,s2:26379/main/2",
            "sentinel",
        ),
        ({"url": "redis+sentinel://s1,s2:5000/main"}, "redis+sentinel://s1,s2:5000/main", "sentinel"),
        ({}, None, None),
    ],
)  # fmt: skip
def test_redis_settings_name_one_url_and_its_topology(
    settings: dict[str, Any], url: str | None, kind: str | None
) -> None:
    redis = RedisSettings(**settings)
    assert redis.url == url
    assert redis.topology == kind


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"url": "http://127.0.0.1:7000"}, "redis.url"),
        ({"url": "redis+cluster://a:7000/3"}, "redis.url"),  # a cluster has only db 0
        ({"url": "redis+cluster://"}, "redis.url"),
        ({"url": "redis+cluster://a:notaport"}, "redis.url"),
        ({"url": "redis://a:1,b:2"}, "redis.url"),  # several hosts need a scheme that says what they are
        ({"url": "redis://a:1?cluster=maybe"}, "redis.url"),
        ({"url": "redis+sentinel://s1:26379"}, "redis.url"),  # no primary name
        ({"cluster": True}, "redis.nodes"),
        ({"nodes": ["a:1"]}, "redis.nodes"),
        ({"sentinel": {"master": "m", "nodes": ["s:1"]}, "url": "redis://a:1"}, "redis.sentinel"),
    ],
)
def test_redis_settings_refuse_what_names_no_redis_clearly(settings: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        RedisSettings(**settings)
    assert caught.value.key == key


def test_cluster_and_sentinel_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROUTER_REDIS__CLUSTER", "true")
    monkeypatch.setenv("ROUTER_REDIS__NODES", '["10.0.0.5:7000", "10.0.0.6:7000"]')
    assert Settings().redis.url == "redis+cluster://10.0.0.5:7000,10.0.0.6:7000"
    monkeypatch.delenv("ROUTER_REDIS__CLUSTER")
    monkeypatch.delenv("ROUTER_REDIS__NODES")
    monkeypatch.setenv("ROUTER_REDIS__SENTINEL__MASTER", "main")
    monkeypatch.setenv("ROUTER_REDIS__SENTINEL__NODES", '["10.0.0.7:26379"]')
    assert Settings().redis.topology == "sentinel"


def test_one_factory_builds_the_client_each_topology_needs() -> None:
    async def main() -> None:
        clients = [
            redis_client("redis://127.0.0.1:1/0", 50, 5),
            redis_client("redis+cluster://127.0.0.1:1,127.0.0.1:2", 50, 5),
            redis_client("redis+sentinel://127.0.0.1:1/main/0", 50, 5),
        ]
        single, cluster, sentinel = clients
        assert type(single) is Redis and isinstance(sentinel, Redis)
        assert isinstance(cluster, ClusterClient)
        assert "Sentinel" in type(sentinel.connection_pool).__name__
        for client in clients:
            await client.aclose()

    run(main)


def test_url_password_is_kept_out_of_the_parsed_repr() -> None:
    target = parse_redis_url("redis+cluster://user:s3cret@a:7000,b:7001")
    assert target.password == "s3cret" and target.username == "user"
    assert target.node_names == ["a:7000", "b:7001"]
    assert "s3cret" not in repr(target)


# --- a real cluster ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    try:
        running = start_cluster(Path(tmp_path_factory.mktemp("cluster")))
    except RuntimeError as exc:
        if "not on PATH" in str(exc):
            pytest.skip(str(exc))
        raise
    try:
        yield running
    finally:
        running.stop()


async def eventually(step: Callable[[], Awaitable[bool]], tries: int = 5) -> bool:
    """True once ``step`` says so, within ``tries`` calls 0.1 s apart."""
    for _ in range(tries):
        if await step():
            return True
        await asyncio.sleep(0.1)
    return False


def make_learner() -> Learner:
    m = len(IDS)
    return Learner(
        IDS,
        TASKS,
        np.linspace(0.5, 2.0, m),
        np.linspace(0.01, 0.04, m),
        np.linspace(0.5, 0.7, m),
        latency_half_life_s=1e9,
        quality_half_life_s=1e9,
        t0=0.0,
    )


def feed(learner: Learner, seed: int, n: int = 30) -> None:
    rng = np.random.default_rng(seed)
    for i in range(n):
        learner.observe(
            int(rng.integers(3)), int(rng.integers(2)), 100.0 + i, True, float(rng.uniform(0.1, 2)), 0.02
        )


def test_cache_entries_spread_over_every_master(cluster: RedisCluster) -> None:
    async def main() -> None:
        # A hash tag in the prefix would pin every entry to one slot: the cache drops it.
        settings = RedisSettings(
            url=cluster.url, prefix="{spread}", op_timeout_ms=500, connect_timeout_ms=500
        )
        cache = await build_cache(settings, CacheSettings())
        try:
            assert cache.backend == "redis"
            for i in range(60):
                await cache.set(f"v1:{i:04d}", f"answer {i}".encode(), 60)
            assert [await cache.get(f"v1:{i:04d}") for i in range(60)] == [
                f"answer {i}".encode() for i in range(60)
            ]
        finally:
            await cache.close()
        per_node = [len(cluster.keys(node, "spread:cache:*")) for node in cluster.nodes]
        assert sum(per_node) == 60
        assert all(count > 0 for count in per_node), per_node

    run(main)


def test_shared_learning_syncs_through_the_cluster_on_one_slot(cluster: RedisCluster) -> None:
    async def main() -> None:
        clients = [redis_client(cluster.url, 500, 500) for _ in range(2)]
        learners = [make_learner(), make_learner()]
        feed(learners[0], 1)
        feed(learners[1], 2)
        replicas = [
            SharedState(client, PREFIX, name, learner, 3600.0, 7200.0, timeout_s=2.0, clock=lambda: 200.0)
            for client, name, learner in zip(clients, ("a", "b"), learners, strict=True)
        ]
        try:
            for replica in replicas:
                await replica.start()
            for _ in range(2):  # a pushes, b pushes and pulls a, a pulls b
                for replica in replicas:
                    assert await replica.sync_once()
            for name in ("lat_n", "success"):
                both = learners[0].local_state().sums[name].w + learners[1].local_state().sums[name].w
                for learner in learners:  # each view: its own evidence plus the other's
                    np.testing.assert_allclose(learner.state().sums[name].w, both)
            assert [r.stats().replicas for r in replicas] == [1, 1]
        finally:
            for replica in replicas:
                await replica.stop()
            for client in clients:
                await client.aclose()
        keys = [key for node in cluster.nodes for key in cluster.keys(node, f"*{PREFIX}*:learn:*")]
        assert len(keys) == 3 and {cluster.slot(key) for key in keys} == {cluster.slot(hash_tag(PREFIX))}

    run(main)


def test_budgets_share_spend_through_the_cluster_on_one_slot(cluster: RedisCluster) -> None:
    async def main() -> None:
        clients = [redis_client(cluster.url, 500, 500) for _ in range(2)]
        a, b = (
            Budget(
                client,
                PREFIX,
                10.0,
                5.0,
                clock=lambda: NOON,
                replica_id=name,
                retry_after_s=0.0,
                timeout_s=2.0,
            )
            for client, name in zip(clients, ("a", "b"), strict=True)
        )
        try:
            await a.charge("key-1", 1.25)
            spend = await b.charge("key-2", 0.5)
            assert spend.global_usd == pytest.approx(1.75)
            assert await a.refresh()
            assert a.check(None).spent == pytest.approx(1.75)
        finally:
            for client in clients:
                await client.aclose()
        keys = [key for node in cluster.nodes for key in cluster.keys(node, f"*{PREFIX}*:budget:*")]
        assert len(keys) == 3  # global and two API keys
        assert {cluster.slot(key) for key in keys} == {cluster.slot(hash_tag(PREFIX))}

    run(main)


def test_scripts_follow_their_slot_when_it_migrates_to_another_master(cluster: RedisCluster) -> None:
    """What pointing a plain client at "the right node" cannot survive: the slot moves."""

    async def main() -> None:
        clients = [redis_client(cluster.url, 500, 500) for _ in range(2)]
        learner = make_learner()
        feed(learner, 4)
        shared = SharedState(clients[0], "moving", "a", learner, 3600.0, 7200.0, timeout_s=2.0)
        budget = Budget(
            clients[1], "moving", 10.0, None, clock=lambda: NOON, replica_id="a", retry_after_s=0.0
        )
        try:
            await shared.start()
            assert await shared.sync_once()
            await budget.charge(None, 1.0)
            slot = cluster.slot(hash_tag("moving"))
            before = cluster.node_for(hash_tag("moving"))
            target = next(node for node in cluster.nodes if node is not before)
            await asyncio.to_thread(cluster.move_slot, slot, target)
            assert cluster.node_for(hash_tag("moving")) is target
            # The very next calls follow MOVED: no failure, nothing lost.
            assert await shared.sync_once() and shared.failures == 0
            assert (await budget.charge(None, 0.5)).global_usd == pytest.approx(1.5)
            assert budget.failures == 0
            assert len(cluster.keys(target, "{moving}:*")) == 4  # three learning keys, one budget hash
            assert cluster.keys(before, "{moving}:*") == []
        finally:
            await shared.stop()
            for client in clients:
                await client.aclose()

    run(main)


def test_ready_describes_the_cluster(cluster: RedisCluster) -> None:
    async def main() -> None:
        cache = await build_cache(RedisSettings(url=cluster.url, op_timeout_ms=500), CacheSettings())
        try:
            body = await redis_topology(cache)
        finally:
            await cache.close()
        assert body is not None
        assert body["topology"] == "cluster" and body["state"] == "ok" and body["up"] is True
        assert body["nodes"] == sorted(f"127.0.0.1:{node.port}" for node in cluster.nodes)
        assert body["slots_covered"] == body["slots"] == 16384
        assert await redis_topology(MemoryCache(4)) is None

    run(main)


def test_master_lost_and_back_empty_degrades_then_recovers_without_a_restart(cluster: RedisCluster) -> None:
    """The master holding the scripts' slot dies (connection errors, then CLUSTERDOWN once the
    others notice) and comes back empty: nothing raises, and the same clients work again."""

    async def main() -> None:
        clients = [redis_client(cluster.url, 200, 200) for _ in range(3)]
        a, b = (
            Budget(
                client,
                "lost",
                100.0,
                None,
                clock=lambda: NOON,
                replica_id=name,
                retry_after_s=0.0,
                timeout_s=1.0,
            )
            for client, name in zip(clients[:2], ("a", "b"), strict=True)
        )
        learner = make_learner()
        feed(learner, 3)
        shared = SharedState(clients[2], "lost", "s", learner, 3600.0, 7200.0, timeout_s=1.0)
        cache = FailoverCache(
            RedisCache(clients[2], "lost:cache", timeout_s=1.0), MemoryCache(100), retry_after_s=0.1
        )
        try:
            await shared.start()
            await a.charge(None, 1.0)
            await b.charge(None, 2.0)
            assert await a.refresh() and a.check(None).spent == pytest.approx(3.0)
            holder = cluster.node_for(hash_tag("lost"))
            holder.kill()
            await asyncio.sleep(3.0)  # past the node timeout: the others say CLUSTERDOWN
            assert {cluster.info(n).get("cluster_state") for n in cluster.nodes if n is not holder} == {
                "fail"
            }
            await a.charge(None, 0.5)  # counted in memory, never raised
            assert not a.redis_up and a.check(None).spent == pytest.approx(3.5)
            assert not await shared.sync_once() and not shared.redis_up
            await cache.set("k", b"v", 60)  # on memory now; never raised
            assert await cache.get("k") == b"v" and cache.backend == "memory"
            holder.start()  # empty: no persistence
            await asyncio.to_thread(cluster.wait_ok)
            # A sees Redis lost the scripts' keys; B has not written its share again yet.
            await a.charge(None, 0.25)
            assert a.redis_up and a.check(None).spent == pytest.approx(3.75)  # never below what was spent
            # A pooled connection to the dead node fails once, as after a single server's restart.
            assert await eventually(b.refresh) and await eventually(a.refresh)
            assert a.check(None).spent == b.check(None).spent == pytest.approx(3.75)
            assert await eventually(shared.sync_once) and shared.redis_up  # the same client, no restart
            assert await eventually(cache.probe) and cache.backend == "redis"
            described = await describe(clients[0], 1.0)
            assert described["state"] == "ok" and described["slots_covered"] == 16384
        finally:
            await shared.stop()
            for client in clients:
                await client.aclose()

    run(main)
