"""The feedback store: request ids two replicas share through a real ``redis-server``, scored
once, kept for their TTL, and memory alone while Redis is gone."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from adaptive_router import RedisUnavailable, RequestError, Router, load_settings
from adaptive_router.state import Answered, FeedbackStore, owner_of
from tests.redis_server import RedisServer, redis_server  # noqa: F401


def answer() -> Answered:
    return Answered("req-aaaa", "chatcmpl-xyz", "openai/gpt-4o-mini", 2, owner_of("key-a"))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def store(client: aioredis.Redis | None, clock: Clock | None = None, **kwargs: float) -> FeedbackStore:
    options = {"ttl_s": 60.0, "max_entries": 100, "timeout_s": 0.5, **kwargs}
    return FeedbackStore(client, "test", clock=clock or Clock(), **options)  # type: ignore[arg-type]


def test_two_replicas_resolve_each_others_ids_and_score_once(redis_server: RedisServer) -> None:  # noqa: F811
    async def run() -> None:
        client = aioredis.from_url(redis_server.url)
        a, b = store(client), store(client)
        await a.remember(answer())
        for some_id in ("req-aaaa", "chatcmpl-xyz"):
            assert await b.resolve(some_id) == answer()
        assert await b.resolve("req-other") is None
        first, second = await b.resolve("chatcmpl-xyz"), await a.resolve("req-aaaa")
        assert first is not None and second is not None
        assert await b.claim(first) is True
        assert await a.claim(second) is False  # A holds its own copy; Redis knows B scored it
        ttl_ms = await client.pttl("test:fb:v1:id:req-aaaa")
        assert 0 < ttl_ms <= 60_000
        await client.aclose()

    asyncio.run(run())


def test_memory_alone_keeps_ids_for_their_ttl_and_a_bounded_number() -> None:
    async def run() -> None:
        clock = Clock()
        alone = store(None, clock, max_entries=4)
        await alone.remember(answer())
        assert await alone.resolve("chatcmpl-xyz") == answer()
        clock.now += 61.0
        assert await alone.resolve("req-aaaa") is None
        for i in range(3):
            await alone.remember(Answered(f"req-{i}", f"chatcmpl-{i}", "m", 0, ""))
        assert await alone.resolve("req-0") is None  # the oldest of six ids went beyond four
        assert await alone.resolve("chatcmpl-2") is not None

    asyncio.run(run())


def test_without_redis_the_store_serves_its_own_ids_and_refuses_to_guess(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    async def run() -> None:
        client = aioredis.from_url(redis_server.url)
        clock = Clock()
        a = store(client, clock, timeout_s=0.2, retry_after_s=2.0)
        redis_server.kill()
        await a.remember(answer())  # Redis is down: kept here, no error
        own = await a.resolve("req-aaaa")
        assert own == answer() and await a.claim(own) is True
        with pytest.raises(RedisUnavailable):
            await a.resolve("req-from-another-replica")  # unknown here, and Redis cannot say
        redis_server.start()
        with pytest.raises(RedisUnavailable, match="skipped"):
            await a.resolve("req-from-another-replica")  # within the back-off: not even tried
        clock.now += 2.5
        assert await a.resolve("req-from-another-replica") is None  # Redis answers again (empty)
        await client.aclose()

    asyncio.run(run())


def test_a_corrupt_entry_is_unknown_not_an_error(redis_server: RedisServer) -> None:  # noqa: F811
    async def run() -> None:
        client = aioredis.from_url(redis_server.url)
        await client.set("test:fb:v1:id:req-bad", b"{not json")
        assert await store(client).resolve("req-bad") is None
        await client.aclose()

    asyncio.run(run())


def test_owners_are_hashes_and_no_key_is_nobody() -> None:
    assert owner_of(None) == owner_of("") == ""
    assert owner_of("key-a") != owner_of("key-b") and "key-a" not in owner_of("key-a")


def test_router_feedback_on_checks_its_inputs() -> None:
    router = Router.from_settings(load_settings(exploration={"seed": 0}))
    model = router.catalogue.ids[0]
    assert router.feedback_on(model, 0, 0.5) is True
    assert router.feedback_on("nobody/nothing", 0, 0.5) is False
    assert router.feedback_on(model, 10_000, 0.5) is False
    with pytest.raises(RequestError, match="score"):
        router.feedback_on(model, 0, 1.5)
