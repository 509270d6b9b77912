"""Budget boundaries that a one-line change would move: settings checks, the near and at-cap
edges, which cap speaks, what /metrics sees, and days that roll over (no Redis needed)."""

from __future__ import annotations

import asyncio
import calendar
import hashlib
import math

import pytest

from adaptive_router import BudgetExceeded, ConfigError
from adaptive_router.state import Budget, Verdict, key_hash, redis_client
from tests.redis_server import RedisServer, redis_server_fixture  # noqa: F401

PREFIX = "edge-router"
NOON = float(calendar.timegm((2025, 3, 14, 12, 0, 0)))


class Clock:
    def __init__(self, now: float = NOON) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def charge(budget: Budget, key: str | None, usd: float) -> None:
    asyncio.run(budget.charge(key, usd))


@pytest.mark.parametrize(
    ("kwargs", "key", "message"),
    [
        ({"global_daily_usd": -0.01}, "budget.global_daily_usd", "must be a finite amount >= 0"),
        ({"global_daily_usd": math.inf}, "budget.global_daily_usd", "must be a finite amount >= 0"),
        ({"global_daily_usd": math.nan}, "budget.global_daily_usd", "must be a finite amount >= 0"),
        ({"per_key_daily_usd": -1.0}, "budget.per_key_daily_usd", "must be a finite amount >= 0"),
        ({"per_key_daily_usd": math.inf}, "budget.per_key_daily_usd", "must be a finite amount >= 0"),
        ({"near_fraction": 0.0}, "budget.near_fraction", "must be in (0, 1]"),
        ({"near_fraction": 1.0001}, "budget.near_fraction", "must be in (0, 1]"),
        ({"price_ceiling_per_mtok": -1.0}, "budget.price_ceiling_per_mtok", "must be a finite price >= 0"),
        (
            {"price_ceiling_per_mtok": math.inf},
            "budget.price_ceiling_per_mtok",
            "must be a finite price >= 0",
        ),
        ({"mode": "slow"}, "budget.mode", "must be 'downgrade' or 'reject'"),
        (
            {"mode": "downgrade"},
            "budget.price_ceiling_per_mtok",
            "is required when budget.mode is 'downgrade'",
        ),
    ],
)
def test_budget_settings_errors_name_the_key(kwargs: dict[str, object], key: str, message: str) -> None:
    options: dict[str, object] = {"global_daily_usd": 10.0, "per_key_daily_usd": None, **kwargs}
    with pytest.raises(ConfigError) as info:
        Budget(None, PREFIX, **options)  # type: ignore[arg-type]
    assert info.value.key == key
    assert str(info.value) == f"setting {key!r}: {message}"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"global_daily_usd": 0.0},
        {"per_key_daily_usd": 0.0},
        {"near_fraction": 1.0},
        {"price_ceiling_per_mtok": 0.0},
        {"mode": "downgrade", "price_ceiling_per_mtok": 0.5},
    ],
)
def test_budget_settings_at_their_limits_are_accepted(kwargs: dict[str, object]) -> None:
    options: dict[str, object] = {"global_daily_usd": 10.0, "per_key_daily_usd": None, **kwargs}
    Budget(None, PREFIX, **options)  # type: ignore[arg-type]


def test_budget_defaults_near_at_80_percent_and_reject_at_the_cap() -> None:
    budget = Budget(None, PREFIX, 10.0, None, clock=Clock())
    charge(budget, None, 7.99)
    assert not budget.check(None).near
    charge(budget, None, 0.01)
    verdict = budget.check(None)
    assert verdict.near and verdict.allowed and verdict.price_ceiling is None  # no ceiling set
    charge(budget, None, 2.0)
    assert not budget.check(None).allowed  # "reject" is the default mode


def test_budget_exactly_at_the_cap_is_at_the_cap() -> None:
    budget = Budget(None, PREFIX, 1.0, None, price_ceiling_per_mtok=0.5, clock=Clock())
    charge(budget, None, 0.999999999)
    assert budget.check(None).allowed
    charge(budget, None, 0.000000001)
    verdict = budget.check(None)
    assert not verdict.allowed and verdict.near and verdict.price_ceiling == 0.5
    assert verdict.spent == pytest.approx(1.0) and verdict.cap == 1.0 and verdict.scope == "global"
    with pytest.raises(BudgetExceeded) as info:
        verdict.raise_if_blocked()
    assert "the router's daily budget of $1.00 is reached ($1.00 spent)" in str(info.value)
    assert "resets at 00:00 UTC" in str(info.value)


def test_budget_the_cap_nearest_its_limit_speaks() -> None:
    budget = Budget(None, PREFIX, 100.0, 2.0, near_fraction=0.5, price_ceiling_per_mtok=1.0, clock=Clock())
    charge(budget, "alice", 1.5)  # 75% of alice's cap, 1.5% of the global one
    verdict = budget.check("alice")
    assert verdict.scope == "key" and verdict.cap == 2.0 and verdict.spent == pytest.approx(1.5)
    assert verdict.near and verdict.allowed and verdict.price_ceiling == 1.0
    assert "this API key's daily budget of $2.00 is nearly reached ($1.50 spent)" in verdict.message
    other = budget.check("bob")
    assert other.scope == "global" and not other.near and other.price_ceiling is None
    assert budget.check(None).scope == "global"


def test_budget_a_zero_cap_blocks_from_the_start() -> None:
    budget = Budget(None, PREFIX, 10.0, 0.0, clock=Clock())
    verdict = budget.check("k")
    assert verdict.scope == "key" and not verdict.allowed


def test_budget_downgrade_never_refuses() -> None:
    budget = Budget(None, PREFIX, 1.0, None, mode="downgrade", price_ceiling_per_mtok=0.2, clock=Clock())
    charge(budget, None, 5.0)
    verdict = budget.check(None)
    assert verdict.allowed and verdict.near and verdict.price_ceiling == 0.2
    verdict.raise_if_blocked()  # does not raise


def test_verdict_message_without_a_cap() -> None:
    assert Verdict(True, False, None, 0.0, None).message == "no daily budget is set"


def test_budget_charge_returns_the_totals() -> None:
    budget = Budget(None, PREFIX, 10.0, 5.0, clock=Clock())
    spend = asyncio.run(budget.charge("k", 0.25))
    assert spend.day == "2025-03-14"
    assert spend.global_usd == pytest.approx(0.25) and spend.key_usd == pytest.approx(0.25)
    spend = asyncio.run(budget.charge(None, 0.5))
    assert spend.global_usd == pytest.approx(0.75) and spend.key_usd is None


@pytest.mark.parametrize("usd", [math.nan, math.inf, -1e-9])
def test_budget_refuses_charges_that_are_not_finite_and_non_negative(usd: float) -> None:
    with pytest.raises(ValueError, match="a charge must be a finite amount >= 0"):
        charge(Budget(None, PREFIX, 1.0, None), None, usd)


def test_budget_snapshot_without_redis() -> None:
    budget = Budget(None, PREFIX, 10.0, 3.0, clock=Clock(), api_keys=["known"])
    charge(budget, "alice", 1.25)
    snap = budget.snapshot()
    assert snap.day == "2025-03-14"
    assert snap.global_usd == pytest.approx(1.25) and snap.global_cap == 10.0 and snap.per_key_cap == 3.0
    assert snap.keys_usd == {key_hash("alice"): pytest.approx(1.25), key_hash("known"): 0.0}
    assert snap.unsynced_usd == pytest.approx(1.25)  # nothing has reached a Redis
    assert snap.redis_up is False


def test_budget_new_day_forgets_old_spend_but_keeps_yesterday() -> None:
    clock = Clock()
    budget = Budget(None, PREFIX, 10.0, None, clock=clock)
    charge(budget, None, 9.0)
    clock.now += 86_400
    charge(budget, None, 1.0)
    assert budget.check(None).spent == pytest.approx(1.0)
    clock.now -= 86_400  # a late read for yesterday still sees yesterday's spend
    assert budget.check(None).spent == pytest.approx(9.0)
    clock.now += 3 * 86_400
    charge(budget, None, 0.5)
    clock.now -= 3 * 86_400
    assert budget.check(None).spent == 0.0  # three days ago: forgotten


def test_key_hash_is_a_short_sha256_never_the_key() -> None:
    assert key_hash("secret") == hashlib.sha256(b"secret").hexdigest()[:16]
    assert len(key_hash("x")) == 16 and "secret" not in key_hash("secret")


def test_budget_field_names_the_replica() -> None:
    budget = Budget(None, PREFIX, 1.0, None, replica_id="pod-7")
    assert budget.field.startswith("pod-7:") and len(budget.field) == len("pod-7:") + 8
    assert Budget(None, PREFIX, 1.0, None, replica_id="pod-7").field != budget.field


def test_budget_without_caps_reports_the_spend_and_is_never_near() -> None:
    budget = Budget(None, PREFIX, None, None, clock=Clock())
    charge(budget, "k", 3.0)
    verdict = budget.check("k")
    assert verdict == Verdict(True, False, None, pytest.approx(3.0), None)
    assert verdict.near is False


def test_budget_caps_under_one_dollar_pick_the_key_when_it_is_nearest() -> None:
    budget = Budget(None, PREFIX, 0.9, 0.2, near_fraction=0.5, price_ceiling_per_mtok=1.0, clock=Clock())
    charge(budget, "k", 0.15)  # key: 75% of $0.20; global: 17% of $0.90
    verdict = budget.check("k")
    assert verdict.scope == "key" and verdict.cap == 0.2 and verdict.near


def _unused_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_budget_without_a_reachable_redis_counts_in_memory_and_backs_off(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        client = redis_client(f"redis://127.0.0.1:{_unused_port()}/0", 100.0, 100.0)
        budget = Budget(client, PREFIX, 10.0, None, clock=Clock(), retry_after_s=60.0)
        try:
            spend = await budget.charge(None, 1.0)
            assert spend.global_usd == pytest.approx(1.0)
            assert budget.redis_up is False and budget.failures == 1 and budget.flushes == 0
            await budget.charge(None, 1.0)  # within retry_after_s: Redis is not asked again
            assert budget.failures == 1
            assert budget.check(None).spent == pytest.approx(2.0)
            assert budget.snapshot().unsynced_usd == pytest.approx(2.0)
            assert await budget.refresh() is False
        finally:
            await client.aclose()

    with caplog.at_level("WARNING", logger="adaptive_router.budget"):
        asyncio.run(main())
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1, "one warning per outage, not one per charge"
    assert warnings[0].startswith("budget: Redis unavailable (") and "counting spend in memory" in warnings[0]


def test_budget_counts_flushes_and_logs_recovery(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        client = redis_client(redis_server.url, 200.0, 500.0)
        budget = Budget(client, PREFIX, 10.0, None, clock=Clock(), retry_after_s=0.0)
        try:
            assert await budget.refresh() is True
            await budget.charge(None, 0.5)
            assert budget.redis_up is True and budget.flushes == 2 and budget.failures == 0
            redis_server.kill()
            await budget.charge(None, 0.5)
            await budget.charge(None, 0.5)
            assert budget.redis_up is False and budget.failures == 2
            redis_server.start()
            assert await budget.refresh() is True
            assert budget.redis_up is True
            assert budget.snapshot().unsynced_usd == 0.0
            assert budget.check(None).spent == pytest.approx(1.5)
        finally:
            await client.aclose()

    with caplog.at_level("WARNING", logger="adaptive_router.budget"):
        asyncio.run(main())
    messages = [r.getMessage() for r in caplog.records]
    assert messages[-1] == "budget: Redis answers again; spend counted meanwhile written"
