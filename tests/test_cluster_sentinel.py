"""A Sentinel-managed primary through the same client factory: cache, learning sync, budgets, failover.

One primary, its replica and one sentinel (Debian ``redis-server``, ``--sentinel`` for the last),
each on a free loopback port. The router is given only ``redis+sentinel://host:port/main/0``.
"""

from __future__ import annotations

import asyncio
import calendar
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from adaptive_router import Learner
from adaptive_router.state import (
    Budget,
    FailoverCache,
    MemoryCache,
    RedisCache,
    SharedState,
    redis_client,
    redis_topology,
)
from tests.redis_server import RedisSentinel, RedisServer, start_sentinel

NOON = float(calendar.timegm((2025, 3, 14, 12, 0, 0)))
FAILOVER_LIMIT_S = 20.0


@pytest.fixture
def sentinel_group(tmp_path: Path) -> Iterator[tuple[RedisServer, RedisServer, RedisSentinel]]:
    try:
        servers = start_sentinel(tmp_path)
    except RuntimeError as exc:
        if "not on PATH" in str(exc):
            pytest.skip(str(exc))
        raise
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()


async def eventually(step: Callable[[], Awaitable[bool]], limit_s: float = 5.0) -> bool:
    deadline = time.monotonic() + limit_s
    for _ in range(int(limit_s / 0.1) + 1):
        if await step() or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    return await step()


def make_learner() -> Learner:
    learner = Learner(
        ("a/x", "b/y"),
        ("general",),
        np.ones(2),
        np.full(2, 0.01),
        np.full(2, 0.5),
        latency_half_life_s=1e9,
        t0=0.0,
    )
    for i in range(10):
        learner.observe(i % 2, 0, 100.0 + i, True, 0.5, 0.01)
    return learner


def test_sentinel_primary_serves_everything_and_is_followed_through_a_failover(
    sentinel_group: tuple[RedisServer, RedisServer, RedisSentinel],
) -> None:
    primary, replica, sentinel = sentinel_group

    async def main() -> None:
        clients = [redis_client(sentinel.url, 200, 300) for _ in range(3)]
        cache = FailoverCache(
            RedisCache(clients[0], "s:cache", timeout_s=1.0), MemoryCache(10), retry_after_s=0.1
        )
        budget = Budget(clients[1], "s", 10.0, None, clock=lambda: NOON, replica_id="a", retry_after_s=0.0)
        shared = SharedState(clients[2], "s", "a", make_learner(), 3600.0, 7200.0, timeout_s=1.0)
        try:
            described = await redis_topology(cache)
            assert described == {
                "topology": "sentinel",
                "service": "main",
                "sentinels": [f"127.0.0.1:{sentinel.port}"],
                "primary": f"127.0.0.1:{primary.port}",
                "up": True,
            }
            await shared.start()
            assert await shared.sync_once()
            await cache.set("k", b"v", 60)
            assert await cache.get("k") == b"v" and cache.backend == "redis"
            assert (await budget.charge(None, 1.5)).global_usd == pytest.approx(1.5)

            primary.kill()
            moved = await asyncio.to_thread(
                lambda: _wait(lambda: sentinel.primary_port() == replica.port, FAILOVER_LIMIT_S)
            )
            assert moved, "the sentinel never promoted the replica"
            # The same clients, no restart: each finds the new primary through the sentinel.
            assert await eventually(shared.sync_once) and shared.redis_up
            assert await eventually(budget.refresh)
            await budget.charge(None, 0.5)
            assert budget.redis_up and budget.check(None).spent == pytest.approx(2.0)
            assert await eventually(cache.probe) and cache.backend == "redis"
            await cache.set("k2", b"v2", 60)
            assert await cache.get("k2") == b"v2"
            described = await redis_topology(cache)
            assert described is not None and described["primary"] == f"127.0.0.1:{replica.port}"
        finally:
            await shared.stop()
            for client in clients:
                await client.aclose()

    asyncio.run(main())


def _wait(condition: Callable[[], bool], limit_s: float) -> bool:
    deadline = time.monotonic() + limit_s
    for _ in range(int(limit_s / 0.1) + 1):
        if condition() or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    return condition()
