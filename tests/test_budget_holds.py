"""Budget reservations: a request's worst case is held before the call, so concurrent requests on
several replicas cannot all pass a cap that each alone would pass (issue 13, item 2)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from adaptive_router import BudgetExceeded, load_settings
from adaptive_router.core import Catalogue, Model
from adaptive_router.pipeline import SIMULATOR_URL_ENV
from adaptive_router.service import create_app
from adaptive_router.simulator import create_simulator_app, sim_models_from_catalogue
from adaptive_router.state import Budget, key_hash, redis_client
from tests.redis_server import RedisServer, redis_server_fixture  # noqa: F401
from tests.servers import running_server
from tests.service_fixtures import scenario, service_stack, user_body

PREFIX = "holds-test"
KEY = "tenant-key"
PROMPT_PRICE, COMPLETION_PRICE = 1e-6, 2e-6  # USD per token, every model alike
MAX_TOKENS = 20


def equal_catalogue() -> Catalogue:
    """Three models at the same prices: the worst case is the same whichever answers."""
    ids = ("lab/a", "lab/b", "lab/c")
    return Catalogue(
        [Model(i, PROMPT_PRICE, COMPLETION_PRICE, 8192, ttft_s=0.3, tpot_s=0.001, quality=0.8) for i in ids],
        source="test",
    )


# --- the Budget against a real Redis ----------------------------------------------------------


async def _budgets(url: str, n: int, **options: Any) -> tuple[list[Budget], list[Any]]:
    clients = [redis_client(url, 200.0, 1000.0) for _ in range(n)]
    budgets = [
        Budget(c, PREFIX, None, 10.0, replica_id=f"r{i}", retry_after_s=0.0, timeout_s=2.0, **options)
        for i, c in enumerate(clients)
    ]
    return budgets, clients


def test_concurrent_holds_on_two_replicas_overshoot_by_at_most_one_worst_case(
    redis_server: RedisServer,
) -> None:
    rng = random.Random(5)

    async def one(budget: Budget) -> float:
        await asyncio.sleep(rng.uniform(0.0, 0.1))  # arrivals spread: some after others settled
        try:
            hold = await budget.reserve(KEY, 1.0)  # the worst case: $1
        except BudgetExceeded:
            return 0.0
        await asyncio.sleep(rng.uniform(0.0, 0.02))  # the call
        cost = rng.uniform(0.5, 1.0)
        await budget.settle(hold, cost)
        return cost

    async def main() -> None:
        (a, b), clients = await _budgets(redis_server.url, 2)
        costs = await asyncio.gather(*(one(a if i % 2 else b) for i in range(100)))
        spent = sum(costs)
        assert spent <= 10.0 + 1.0  # over the cap by one worst case at most
        assert 10 <= sum(c > 0 for c in costs) < 100  # at least the cap's worth held, the rest refused
        for budget in (a, b):
            assert await budget.refresh()
            assert budget.snapshot().keys_usd[key_hash(KEY)] == pytest.approx(spent, abs=1e-6)
            assert budget.snapshot().held_usd == 0  # every hold was settled
        await a.charge(KEY, 10.0)  # over the cap for certain now
        for budget in (a, b):
            with pytest.raises(BudgetExceeded, match=r"daily budget of \$10.00 is reached"):
                await budget.reserve(KEY, 0.01)
        for client in clients:
            await client.aclose()

    asyncio.run(main())


def test_a_hold_counts_until_settled_and_a_failure_releases_it(redis_server: RedisServer) -> None:
    async def main() -> None:
        (a, b), clients = await _budgets(redis_server.url, 2)
        hold = await a.reserve(KEY, 10.0)  # in flight: the whole cap is held
        with pytest.raises(BudgetExceeded):
            await b.reserve(KEY, 0.1)  # b sees a's hold in Redis before anything is spent
        await a.settle(hold, 0.0)  # the call failed: nothing spent, the hold goes
        await a.settle(hold, 5.0)  # a second settle of the same hold changes nothing
        second = await b.reserve(KEY, 0.1)
        await b.settle(second, 0.1)
        assert await a.refresh()
        assert a.snapshot().keys_usd[key_hash(KEY)] == pytest.approx(0.1)
        for client in clients:
            await client.aclose()

    asyncio.run(main())


def test_holds_of_a_process_that_died_expire(redis_server: RedisServer) -> None:
    async def main() -> None:
        (dead,), clients = await _budgets(redis_server.url, 1, hold_ttl_s=0.3)
        (alive,), more = await _budgets(redis_server.url, 1)
        await dead.reserve(KEY, 10.0)  # never settled: its process "died"
        with pytest.raises(BudgetExceeded):
            await alive.reserve(KEY, 0.1)
        for _ in range(100):  # bounded: the hold lives 0.3 s on Redis's clock
            await asyncio.sleep(0.05)
            with contextlib.suppress(BudgetExceeded):
                await alive.reserve(KEY, 0.1)
                break
        else:
            pytest.fail("the dead process's hold never expired")
        for client in clients + more:
            await client.aclose()

    asyncio.run(main())


def test_without_redis_holds_are_checked_in_memory(redis_server: RedisServer) -> None:
    async def main() -> None:
        (budget,), clients = await _budgets(redis_server.url, 1)
        redis_server.kill()
        first = await budget.reserve(KEY, 6.0)
        second = await budget.reserve(KEY, 6.0)  # 6 < 10 held: admitted, overshoot by one worst case
        with pytest.raises(BudgetExceeded):
            await budget.reserve(KEY, 6.0)  # 12 held: at the cap
        assert not budget.redis_up
        await budget.settle(first, 0.0)
        await budget.settle(second, 1.0)
        hold = await budget.reserve(KEY, 6.0)  # 1 spent: room again
        await budget.settle(hold, 0.0)
        for client in clients:
            await client.aclose()

    asyncio.run(main())


# --- through two real routers sharing one Redis -------------------------------------------------


@contextlib.contextmanager
def two_replicas(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, cap: float, catalogue: Catalogue
) -> Iterator[tuple[str, str]]:
    for name in [n for n in os.environ if n.startswith("ROUTER_")]:
        monkeypatch.delenv(name)
    sim_scenario = scenario(time_scale=1.0, output_tokens_median=40, output_tokens_sigma=0.0)
    sim = create_simulator_app(sim_models_from_catalogue(catalogue), sim_scenario)
    with running_server(sim) as sim_url:
        monkeypatch.setenv(SIMULATOR_URL_ENV, sim_url + "/v1")

        def app(replica: str) -> Any:
            settings = load_settings(
                exploration={"policy": "greedy", "seed": 0},
                cache={"enabled": False},
                redis={"url": redis_url, "prefix": PREFIX},
                learning={"replica_id": replica},
                server={"api_keys": [KEY]},
                budget={"per_key_daily_usd": cap},
            )
            return create_app(settings, catalogue=catalogue)

        with running_server(app("a")) as a, running_server(app("b")) as b:
            yield a, b


def _spent(answer: dict[str, Any]) -> float:
    usage = answer["usage"]
    return float(usage["prompt_tokens"] * PROMPT_PRICE + usage["completion_tokens"] * COMPLETION_PRICE)


def test_a_burst_of_100_on_two_replicas_overshoots_the_cap_by_at_most_one_worst_case(
    monkeypatch: pytest.MonkeyPatch, redis_server: RedisServer
) -> None:
    body = user_body("Say hi.", max_tokens=MAX_TOKENS)
    prompt_tokens = 2  # "Say hi." is 7 characters: 2 tokens by the router's and the simulator's count
    worst = prompt_tokens * PROMPT_PRICE + MAX_TOKENS * COMPLETION_PRICE
    cap = 5 * worst  # without holds, 100 concurrent requests would spend ~20x the cap

    async def burst(urls: tuple[str, str]) -> list[httpx.Response]:
        headers = {"authorization": f"Bearer {KEY}"}
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(timeout=30.0, headers=headers, limits=limits) as client:
            sends = [client.post(f"{urls[i % 2]}/v1/chat/completions", json=body) for i in range(100)]
            return await asyncio.gather(*sends)

    with two_replicas(monkeypatch, redis_server.url, cap, equal_catalogue()) as urls:
        answers = asyncio.run(burst(urls))
    statuses = [r.status_code for r in answers]
    assert set(statuses) <= {200, 429}, statuses
    ok = [r.json() for r in answers if r.status_code == 200]
    assert all(a["usage"]["prompt_tokens"] == prompt_tokens for a in ok)
    spent = sum(_spent(a) for a in ok)
    assert cap <= spent <= cap + worst + 1e-12, (spent, cap, worst)
    refused = [r for r in answers if r.status_code == 429]
    assert len(refused) >= 90
    assert refused[0].json()["error"]["code"] == "budget_exceeded"
    assert int(refused[0].headers["retry-after"]) >= 1
    raw = redis.Redis.from_url(redis_server.url)
    try:  # what the replicas wrote is what the answers cost (settled, not held)
        stored = [k for k in raw.keys(f"*{key_hash(KEY)}") if not k.endswith(b":holds")]
        total = sum(int(v) for key in stored for v in raw.hvals(key)) / 1e9
    finally:
        raw.close()
    assert total == pytest.approx(spent, abs=1e-9)


def test_a_cache_hit_over_the_cap_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    body = user_body("Cache me.", temperature=0, max_tokens=MAX_TOKENS)
    headers = {"authorization": f"Bearer {KEY}"}
    with service_stack(
        monkeypatch,
        catalogue=equal_catalogue(),
        server={"api_keys": [KEY]},
        budget={"per_key_daily_usd": 1e-9},  # the first answer alone spends more than this
    ) as stack:
        first = stack.chat(body, headers)
        assert first.status_code == 200 and first.headers["x-router-cache"] == "miss"
        again = stack.chat(body, headers)
        assert again.status_code == 429, again.text
        assert again.json()["error"]["code"] == "budget_exceeded"
        assert stack.sim_stats()["requests_total"] == 1
