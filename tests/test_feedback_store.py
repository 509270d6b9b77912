"""The feedback store: request ids two replicas share through a real ``redis-server``, scored
once, kept for their TTL, and memory alone while Redis is gone."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from adaptive_router import RedisUnavailable, RequestError, Router, load_settings
from adaptive_router.state import Answered, FeedbackStore, owner_of
from tests.redis_server import RedisServer, redis_server  # noqa: F401

OWNER = owner_of("key-a")


def answer() -> Answered:
    return Answered("req-aaaa", "chatcmpl-xyz", "openai/gpt-4o-mini", 2, OWNER)


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
            assert await b.resolve(some_id, OWNER) == answer()
        assert await b.resolve("req-other", OWNER) is None
        first, second = await b.resolve("chatcmpl-xyz", OWNER), await a.resolve("req-aaaa", OWNER)
        assert first is not None and second is not None
        assert await b.claim(first) is True
        assert await a.claim(second) is False  # A holds its own copy; Redis knows B scored it
        ttl_ms = await client.pttl("test:fb:v2:id:req-aaaa")
        assert 0 < ttl_ms <= 60_000
        await client.aclose()

    asyncio.run(run())


def test_two_keys_with_the_same_request_id_keep_a_record_each(redis_server: RedisServer) -> None:  # noqa: F811
    """A client chooses its ``x-request-id``: another key sending the same one neither overwrites
    nor claims this key's request; an admin takes its own first, else the latest of anyone's."""

    async def run() -> None:
        client = aioredis.from_url(redis_server.url)
        for a, b in ((store(client), store(client)), (store(None), None)):
            other = owner_of("key-b")
            await a.remember(Answered("req-same", None, "m/a", 1, OWNER))
            await a.remember(Answered("req-same", None, "m/b", 2, other))
            for resolver in (a, b) if b is not None else (a,):  # this replica, and another through Redis
                mine = await resolver.resolve("req-same", OWNER)
                theirs = await resolver.resolve("req-same", other)
                assert mine is not None and (mine.model, mine.cell) == ("m/a", 1)
                assert theirs is not None and (theirs.model, theirs.cell) == ("m/b", 2)
                assert await resolver.resolve("req-same", owner_of("key-c")) is None
                latest = await resolver.resolve("req-same", owner_of("admin"), any_owner=True)
                assert latest is not None and latest.model == "m/b"
                own = await resolver.resolve("req-same", OWNER, any_owner=True)
                assert own is not None and own.model == "m/a"
            first, second = await a.resolve("req-same", OWNER), await a.resolve("req-same", other)
            assert first is not None and second is not None
            assert await a.claim(first) is True and await a.claim(second) is True  # a claim each
        await client.aclose()

    asyncio.run(run())


def test_memory_alone_keeps_ids_for_their_ttl_and_a_bounded_number() -> None:
    async def run() -> None:
        clock = Clock()
        alone = store(None, clock, max_entries=4)
        await alone.remember(answer())
        assert await alone.resolve("chatcmpl-xyz", OWNER) == answer()
        clock.now += 61.0
        assert await alone.resolve("req-aaaa", OWNER) is None
        for i in range(3):
            await alone.remember(Answered(f"req-{i}", f"chatcmpl-{i}", "m", 0, OWNER))
        assert await alone.resolve("req-0", OWNER) is None  # the oldest of six ids went beyond four
        assert await alone.resolve("chatcmpl-2", OWNER) is not None

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
        own = await a.resolve("req-aaaa", OWNER)
        assert own == answer() and await a.claim(own) is True
        with pytest.raises(RedisUnavailable):
            await a.resolve("req-from-another-replica", OWNER)  # unknown here, and Redis cannot say
        redis_server.start()
        with pytest.raises(RedisUnavailable, match="skipped"):
            await a.resolve("req-from-another-replica", OWNER)  # within the back-off: not even tried
        clock.now += 2.5
        assert await a.resolve("req-from-another-replica", OWNER) is None  # Redis answers again (empty)
        await client.aclose()

    asyncio.run(run())


def test_a_corrupt_entry_is_unknown_not_an_error(redis_server: RedisServer) -> None:  # noqa: F811
    async def run() -> None:
        client = aioredis.from_url(redis_server.url)
        await client.hset("test:fb:v2:id:req-bad", OWNER, b"{not json")
        assert await store(client).resolve("req-bad", OWNER) is None
        assert await store(client).resolve("req-bad", OWNER, any_owner=True) is None
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
