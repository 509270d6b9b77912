from __future__ import annotations

import asyncio
import calendar
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest
import redis

from adaptive_router import BudgetExceeded, ConfigError
from adaptive_router.core import load_catalogue
from adaptive_router.state import Budget, key_hash, price_mask, redis_client
from tests.redis_server import RedisServer, redis_server_fixture  # noqa: F401

PREFIX = "test-router"
LOGGER = "adaptive_router.budget"
NOON = float(calendar.timegm((2025, 3, 14, 12, 0, 0)))


class FakeClock:
    def __init__(self, now: float = NOON) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def run(main: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(main())  # type: ignore[arg-type]


class Budgets:
    """Budget instances on one Redis, each with its own client, all closed at the end."""

    def __init__(self, url: str | None, clock: Callable[[], float], **options: Any) -> None:
        self.url = url
        self.clock = clock
        self.options: dict[str, Any] = {
            "global_daily_usd": 10.0,
            "per_key_daily_usd": 4.0,
            "near_fraction": 0.8,
            "price_ceiling_per_mtok": 1.0,
            "mode": "reject",
            "retry_after_s": 0.0,
            **options,
        }
        self.clients: list[redis.asyncio.Redis] = []

    def make(self, replica: str = "r") -> Budget:
        client = None
        if self.url is not None:
            client = redis_client(self.url, 200.0, 500.0)
            self.clients.append(client)
        return Budget(client, PREFIX, clock=self.clock, replica_id=replica, **self.options)

    async def __aenter__(self) -> Budgets:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for client in self.clients:
            await client.aclose()


# --- verdicts, without Redis ------------------------------------------------------------------


def test_budget_verdicts_below_near_and_at_the_cap_in_reject_mode() -> None:
    async def main() -> None:
        async with Budgets(None, FakeClock()) as budgets:
            budget = budgets.make()
            verdict = budget.check("k1")
            assert (verdict.allowed, verdict.near, verdict.price_ceiling) == (True, False, None)
            await budget.charge("k1", 3.0)  # the key: 3 of 4 (75%), global 3 of 10
            assert budget.check("k1").near is False
            await budget.charge("k1", 0.2)  # 80% of the key's cap
            verdict = budget.check("k1")
            assert (verdict.allowed, verdict.near, verdict.price_ceiling) == (True, True, 1.0)
            assert (verdict.scope, verdict.cap) == ("key", 4.0)
            assert verdict.spent == pytest.approx(3.2)
            assert budget.check("k2").near is False  # another key is not near its cap
            await budget.charge("k1", 0.8)
            verdict = budget.check("k1")
            assert verdict.allowed is False
            with pytest.raises(BudgetExceeded, match=r"API key's daily budget of \$4.00 is reached") as info:
                verdict.raise_if_blocked()
            assert info.value.scope == "key"
            budget.check("k2").raise_if_blocked()  # others still pass

    run(main)


def test_budget_downgrade_mode_keeps_serving_under_the_ceiling_at_the_cap() -> None:
    async def main() -> None:
        async with Budgets(None, FakeClock(), mode="downgrade", per_key_daily_usd=None) as budgets:
            budget = budgets.make()
            await budget.charge(None, 12.0)
            verdict = budget.check("anyone")
            assert (verdict.allowed, verdict.near, verdict.price_ceiling) == (True, True, 1.0)
            assert (verdict.scope, verdict.spent, verdict.cap) == ("global", 12.0, 10.0)

    run(main)


def test_budget_without_caps_allows_everything() -> None:
    budget = Budget(None, PREFIX, None, None)
    assert budget.check("k").allowed and budget.check(None).cap is None


def test_budget_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="price_ceiling"):
        Budget(None, PREFIX, 10.0, None, mode="downgrade")
    with pytest.raises(ConfigError, match="near_fraction"):
        Budget(None, PREFIX, 10.0, None, near_fraction=1.5)
    with pytest.raises(ConfigError, match="global_daily_usd"):
        Budget(None, PREFIX, -1.0, None)


def test_budget_rejects_negative_charges() -> None:
    with pytest.raises(ValueError, match="charge"):
        asyncio.run(Budget(None, PREFIX, 1.0, None).charge("k", -0.5))


def test_price_mask_keeps_models_at_or_under_the_ceiling() -> None:
    catalogue = load_catalogue("bundled")
    per_mtok = np.asarray(catalogue.price_completion) * 1e6
    ceiling = float(np.median(per_mtok))
    mask = price_mask(catalogue, ceiling)
    assert mask.dtype == np.bool_ and mask.shape == (len(catalogue),)
    assert np.all(per_mtok[mask] <= ceiling * (1 + 1e-9)) and np.all(per_mtok[~mask] > ceiling)
    assert mask[int(np.argmin(np.abs(per_mtok - ceiling)))]  # exactly at the ceiling passes
    assert price_mask(catalogue, None).all()


def test_price_mask_accepts_a_price_equal_to_the_ceiling_despite_rounding() -> None:
    class Prices:
        price_completion = np.array([0.6e-6, 0.61e-6, 0.0])

    mask = price_mask(Prices(), 0.6)  # type: ignore[arg-type]
    assert mask.tolist() == [True, False, True]


# --- through a real Redis ---------------------------------------------------------------------


def test_budget_concurrent_charges_on_two_replicas_sum_exactly(redis_server: RedisServer) -> None:
    async def main() -> None:
        async with Budgets(redis_server.url, FakeClock(), global_daily_usd=1000.0) as budgets:
            a, b = budgets.make("a"), budgets.make("b")
            charges = [(a if i % 2 else b, f"k{i % 3}", 0.001 * (i % 7 + 1)) for i in range(300)]
            await asyncio.gather(*(budget.charge(key, usd) for budget, key, usd in charges))
            for budget in (a, b):
                assert await budget.refresh()
            expected = sum(round(usd * 1e9) for _, _, usd in charges)
            for budget in (a, b):
                assert round(budget.check("k0").spent * 1e9) != 0
                assert round(budget.snapshot().global_usd * 1e9) == expected
                for k in range(3):
                    key_total = sum(round(u * 1e9) for _, key, u in charges if key == f"k{k}")
                    assert round(budget.snapshot().keys_usd[key_hash(f"k{k}")] * 1e9) == key_total
            assert a.flushes < 300  # charges waiting on one round trip share the next one

    run(main)


def test_budget_spend_during_a_redis_outage_is_reconciled_exactly_once(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        async with Budgets(redis_server.url, FakeClock(), global_daily_usd=100.0) as budgets:
            a, b = budgets.make("a"), budgets.make("b")
            await a.charge("k", 1.0)
            await b.charge("k", 2.0)
            assert (await a.charge("k", 0.5)).global_usd == pytest.approx(3.5)

            redis_server.kill()
            spend = await a.charge("k", 4.0)
            assert spend.global_usd == pytest.approx(7.5)  # last known total + what waits here
            await b.charge(None, 8.0)
            await b.charge(None, 0.25)
            assert not a.redis_up and not b.redis_up
            assert b.snapshot().global_usd == pytest.approx(3.0 + 8.25)  # b never saw a's 0.5
            assert a.snapshot().unsynced_usd == pytest.approx(4.0)

            redis_server.start()  # empty: everything before the kill is gone from Redis
            assert await a.refresh() and await b.refresh() and await a.refresh()
            for budget in (a, b):
                snapshot = budget.snapshot()
                assert snapshot.global_usd == pytest.approx(15.75, abs=1e-9)
                assert snapshot.keys_usd[key_hash("k")] == pytest.approx(7.5, abs=1e-9)
                assert snapshot.unsynced_usd == 0
            for _ in range(3):  # repeated writes count nothing twice
                assert await b.refresh()
            assert b.snapshot().global_usd == pytest.approx(15.75, abs=1e-9)

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        run(main)
    down = [r for r in caplog.records if "unavailable" in r.getMessage()]
    assert len(down) == 2  # once per replica


def test_budget_counts_a_restarted_replica_and_a_wiped_redis(redis_server: RedisServer) -> None:
    async def main() -> None:
        async with Budgets(redis_server.url, FakeClock()) as budgets:
            first = budgets.make("a")
            await first.charge("k", 1.0)
            second = budgets.make("a")  # same replica id, new process
            assert (await second.charge("k", 0.5)).global_usd == pytest.approx(1.5)
            raw = redis.Redis.from_url(redis_server.url)
            raw.flushall()  # Redis lost everything without dropping the connection
            raw.close()
            await second.charge("k", 0.25)
            await first.refresh()
            assert first.snapshot().global_usd == pytest.approx(1.75)
            assert (await second.charge(None, 0.0)).global_usd == pytest.approx(1.75)

    run(main)


def test_budget_shared_caps_apply_across_replicas(redis_server: RedisServer) -> None:
    async def main() -> None:
        async with Budgets(redis_server.url, FakeClock(), per_key_daily_usd=None, api_keys=["k"]) as budgets:
            a, b = budgets.make("a"), budgets.make("b")
            await a.charge("k", 9.5)
            assert b.check("k").allowed  # b has not heard yet: the check never waits on Redis
            assert await b.refresh()
            assert b.check("k").allowed is True and b.check("k").near is True
            await b.charge("k", 0.5)
            assert b.check("k").allowed is False
            assert await a.refresh() and a.check(None).allowed is False

    run(main)


def test_budget_new_utc_day_starts_from_zero(redis_server: RedisServer) -> None:
    async def main() -> None:
        clock = FakeClock(NOON + 11 * 3600 + 59 * 60)  # 23:59 UTC
        async with Budgets(redis_server.url, clock) as budgets:
            budget = budgets.make()
            await budget.charge("k", 9.0)
            assert budget.check("k").allowed is False  # the key's cap of 4
            clock.now += 120  # 00:01 UTC, the next day
            verdict = budget.check("k")
            assert (verdict.allowed, verdict.near, verdict.spent) == (True, False, 0.0)
            spend = await budget.charge("k", 1.0)
            assert (spend.day, spend.global_usd, spend.key_usd) == ("2025-03-15", 1.0, 1.0)
            raw = redis.Redis.from_url(redis_server.url)
            keys = sorted(k.decode() for k in raw.keys("*"))
            ttl = raw.ttl(keys[0])
            raw.close()
            assert keys == [
                f"{{{PREFIX}}}:budget:v1:2025-03-14:global",
                f"{{{PREFIX}}}:budget:v1:2025-03-14:key:{key_hash('k')}",
                f"{{{PREFIX}}}:budget:v1:2025-03-15:global",
                f"{{{PREFIX}}}:budget:v1:2025-03-15:key:{key_hash('k')}",
            ]
            assert 0 < ttl <= 2 * 86_400

    run(main)
