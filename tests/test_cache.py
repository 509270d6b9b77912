from __future__ import annotations

import asyncio
import logging
import re
import socket
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from adaptive_router import CacheUnavailable, ConfigError, RouterError
from adaptive_router._settings import CacheSettings, RedisSettings
from adaptive_router.state import (
    Cache,
    FailoverCache,
    MemoryCache,
    RedisCache,
    build_cache,
    is_cacheable,
    redis_client,
    request_cache_key,
)
from tests.redis_server import RedisServer, free_port, redis_server_fixture  # noqa: F401

GENEROUS_MS = 1000.0  # loopback Redis in tests: timeouts only matter when it is dead


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def run(coro_fn: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        await coro_fn()

    asyncio.run(main())


def make_redis_cache(url: str, prefix: str = "test:cache") -> RedisCache:
    return RedisCache(redis_client(url, GENEROUS_MS, GENEROUS_MS), prefix, timeout_s=2.0)


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that accepts TCP connections (via the backlog) and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield int(sock.getsockname()[1])


# --------------------------------------------------------------------------------------------
# MemoryCache


def test_memory_cache_round_trip_and_delete() -> None:
    async def scenario() -> None:
        cache = MemoryCache(10)
        assert cache.backend == "memory"
        assert isinstance(cache, Cache)
        await cache.set("a", b"1", 60)
        assert await cache.get("a") == b"1"
        await cache.set("a", b"2", 60)
        assert await cache.get("a") == b"2"
        await cache.delete("a")
        await cache.delete("never-set")
        assert await cache.get("a") is None
        await cache.close()

    run(scenario)


def test_memory_cache_evicts_least_recently_used() -> None:
    async def scenario() -> None:
        cache = MemoryCache(2)
        await cache.set("a", b"1", 60)
        await cache.set("b", b"2", 60)
        assert await cache.get("a") == b"1"  # "a" is now the most recent
        await cache.set("c", b"3", 60)
        assert len(cache) == 2
        assert await cache.get("b") is None
        assert await cache.get("a") == b"1"
        assert await cache.get("c") == b"3"

    run(scenario)


def test_memory_cache_expires_entries_after_ttl() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        cache = MemoryCache(10, clock=clock)
        await cache.set("short", b"s", 5)
        await cache.set("long", b"l", 50)
        clock.advance(4.999)
        assert await cache.get("short") == b"s"
        clock.advance(0.001)
        assert await cache.get("short") is None
        assert len(cache) == 1  # dropped on read
        assert await cache.get("long") == b"l"
        await cache.set("zero", b"z", 0)
        assert await cache.get("zero") is None

    run(scenario)


def test_memory_cache_rejects_zero_capacity() -> None:
    with pytest.raises(ConfigError):
        MemoryCache(0)


KEYS = st.sampled_from(["a", "b", "c", "d", "e"])
VALUES = st.binary(max_size=4)
OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("set"), KEYS, VALUES, st.integers(min_value=-1, max_value=10)),
        st.tuples(st.just("get"), KEYS),
        st.tuples(st.just("delete"), KEYS),
        st.tuples(st.just("advance"), st.integers(min_value=0, max_value=6)),
    ),
    max_size=60,
)


@given(OPERATIONS)
def test_memory_cache_behaves_like_a_dict_with_expiry(operations: list[tuple[Any, ...]]) -> None:
    clock = FakeClock(0.0)
    cache = MemoryCache(100, clock=clock)  # larger than the key space: no eviction here
    model: dict[str, tuple[float, bytes]] = {}
    loop = asyncio.new_event_loop()
    try:
        for op in operations:
            if op[0] == "advance":
                clock.advance(op[1])
            elif op[0] == "set":
                _, key, value, ttl = op
                loop.run_until_complete(cache.set(key, value, ttl))
                model.pop(key, None)
                if ttl > 0:
                    model[key] = (clock.now + ttl, value)
            elif op[0] == "delete":
                loop.run_until_complete(cache.delete(op[1]))
                model.pop(op[1], None)
            else:
                entry = model.get(op[1])
                expected = entry[1] if entry is not None and clock.now < entry[0] else None
                assert loop.run_until_complete(cache.get(op[1])) == expected
    finally:
        loop.close()


@given(
    st.integers(min_value=1, max_value=4),
    st.lists(st.tuples(st.sampled_from(["set", "get"]), KEYS, VALUES), max_size=60),
)
def test_memory_cache_keeps_the_most_recently_used(
    capacity: int, operations: list[tuple[str, str, bytes]]
) -> None:
    cache = MemoryCache(capacity, clock=FakeClock())
    model: list[tuple[str, bytes]] = []  # least recent first
    loop = asyncio.new_event_loop()
    try:
        for kind, key, value in operations:
            found = [item for item in model if item[0] == key]
            if kind == "set":
                model = [item for item in model if item[0] != key] + [(key, value)]
                model = model[-capacity:]
                loop.run_until_complete(cache.set(key, value, 60))
            else:
                if found:
                    model = [item for item in model if item[0] != key] + found
                expected = found[0][1] if found else None
                assert loop.run_until_complete(cache.get(key)) == expected
            assert len(cache) == len(model) <= capacity
    finally:
        loop.close()


# --------------------------------------------------------------------------------------------
# RedisCache, against a real redis-server


def test_redis_cache_round_trip_under_prefix(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        cache = make_redis_cache(redis_server.url, prefix="app:cache")
        try:
            assert cache.backend == "redis"
            await cache.set("k", b"\x00value", 60)
            assert await cache.get("k") == b"\x00value"
            await cache.delete("k")
            assert await cache.get("k") is None
            await cache.set("k2", b"v2", 60)
        finally:
            await cache.close()

    run(scenario)
    with redis.Redis.from_url(redis_server.url) as raw:
        assert raw.get("app:cache:k2") == b"v2"
        assert raw.get("k2") is None


def test_redis_cache_applies_ttl(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        cache = make_redis_cache(redis_server.url)
        try:
            await cache.set("long", b"l", 30)
            await cache.set("short", b"s", 0.05)
            await cache.set("zero", b"z", 0)
            with redis.Redis.from_url(redis_server.url) as raw:
                assert 0 < raw.pttl("test:cache:long") <= 30_000
                assert raw.exists("test:cache:zero") == 0
            for _ in range(200):  # bounded: 200 x 10 ms
                if await cache.get("short") is None:
                    break
                await asyncio.sleep(0.01)
            assert await cache.get("short") is None
            assert await cache.get("long") == b"l"
        finally:
            await cache.close()

    run(scenario)


def test_redis_cache_raises_cache_unavailable_when_nothing_listens() -> None:
    async def scenario() -> None:
        cache = make_redis_cache(f"redis://127.0.0.1:{free_port()}/0")
        try:
            with pytest.raises(CacheUnavailable):
                await cache.get("k")
            with pytest.raises(CacheUnavailable):
                await cache.set("k", b"v", 1)
            with pytest.raises(RouterError):
                await cache.delete("k")
        finally:
            await cache.close()

    run(scenario)


def test_redis_cache_times_out_when_redis_never_answers(silent_port: int) -> None:
    async def scenario() -> None:
        cache = RedisCache(redis_client(f"redis://127.0.0.1:{silent_port}/0", 100, 50), "t", timeout_s=0.5)
        try:
            with pytest.raises(CacheUnavailable):
                await cache.get("k")
        finally:
            await cache.close()

    run(scenario)


def test_redis_client_fails_fast_without_retries() -> None:
    async def scenario() -> None:
        client = redis_client("redis://127.0.0.1:1/0", 50, 5)
        kwargs = client.connection_pool.connection_kwargs
        assert (kwargs["socket_connect_timeout"], kwargs["socket_timeout"]) == (0.05, 0.005)
        assert kwargs["retry"].get_retries() == 0
        await client.aclose()

    run(scenario)


def test_redis_client_rejects_a_malformed_url() -> None:
    with pytest.raises(ConfigError):
        redis_client("http://127.0.0.1:1", 50, 5)


# --------------------------------------------------------------------------------------------
# FailoverCache


def test_failover_cache_survives_a_redis_crash_and_returns_to_redis(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    changes: list[str] = []

    async def scenario() -> None:
        primary = make_redis_cache(redis_server.url, prefix="fo")
        cache = FailoverCache(
            primary, MemoryCache(100, clock=clock), 5.0, clock=clock, on_state_change=changes.append
        )
        try:
            await cache.set("before", b"1", 60)
            assert await cache.get("before") == b"1"
            assert (cache.backend, cache.redis_up) == ("redis", True)

            redis_server.kill()
            await cache.set("during", b"2", 60)  # fails on Redis, lands in memory
            assert (cache.backend, cache.redis_up) == ("memory", False)
            assert await cache.get("during") == b"2"
            assert await cache.get("before") is None
            await cache.delete("during")
            assert await cache.get("during") is None
            await cache.set("during", b"3", 60)

            redis_server.start()
            clock.advance(4.9)
            assert await cache.get("during") == b"3"  # still on memory: too early to probe
            assert cache.backend == "memory"
            clock.advance(0.2)
            assert await cache.get("during") is None  # the probe answered: Redis, empty after restart
            assert (cache.backend, cache.redis_up) == ("redis", True)
            await cache.set("after", b"4", 60)
            with redis.Redis.from_url(redis_server.url) as raw:  # a separate client sees it
                assert raw.get("fo:after") == b"4"

            redis_server.kill()  # a second outage must not resurface values from the first
            assert await cache.get("during") is None
            assert cache.backend == "memory"
        finally:
            await cache.close()

    with caplog.at_level(logging.WARNING, logger="adaptive_router.cache"):
        run(scenario)
    assert changes == ["memory", "redis", "memory"]
    unavailable = [r for r in caplog.records if "unavailable" in r.getMessage()]
    assert len(unavailable) == 2  # once per outage, however many calls failed


class CountingRedisCache(RedisCache):
    calls = 0

    async def get(self, key: str) -> bytes | None:
        self.calls += 1
        return await super().get(key)


def test_failover_cache_sends_one_probe_at_a_time(silent_port: int) -> None:
    clock = FakeClock()

    async def scenario() -> None:
        primary = CountingRedisCache(
            redis_client(f"redis://127.0.0.1:{silent_port}/0", 100, 50), "t", timeout_s=0.3
        )
        cache = FailoverCache(primary, MemoryCache(100, clock=clock), 2.0, clock=clock)
        try:
            assert await cache.get("k") is None  # times out on Redis, answers from memory
            assert primary.calls == 1
            assert not cache.redis_up
            await cache.set("k", b"m", 60)
            assert await cache.get("k") == b"m"
            assert primary.calls == 1  # down, and not yet time to probe

            clock.advance(2.5)
            results = await asyncio.gather(*(cache.get("k") for _ in range(20)))
            assert primary.calls == 2  # one probe; the other 19 went to memory meanwhile
            assert results == [b"m"] * 20  # and the failed probe answered from memory too
            assert not cache.redis_up
            assert await cache.get("k") == b"m"
            assert primary.calls == 2  # the failed probe restarted the wait
        finally:
            await cache.close()

    run(scenario)


class StalledRedisCache(RedisCache):
    """Redis whose ``get`` hangs until released and then fails, and whose ``set`` follows
    ``healthy``: enough to stage a late failure of a call that began before a switch."""

    def __init__(self) -> None:
        super().__init__(redis_client("redis://127.0.0.1:1/0", 50, 5), "t")
        self.release = asyncio.Event()
        self.healthy = True

    async def get(self, key: str) -> bytes | None:
        await self.release.wait()
        raise CacheUnavailable("stalled call finally failed")

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        if not self.healthy:
            raise CacheUnavailable("down")


def test_failover_cache_ignores_a_late_failure_from_before_a_switch() -> None:
    clock = FakeClock()
    changes: list[str] = []

    async def scenario() -> None:
        primary = StalledRedisCache()
        cache = FailoverCache(primary, MemoryCache(10), 1.0, clock=clock, on_state_change=changes.append)
        stalled = asyncio.create_task(cache.get("k"))  # starts on Redis while it is up
        await asyncio.sleep(0)
        primary.healthy = False
        await cache.set("k", b"v", 60)  # fails: memory
        primary.healthy = True
        clock.advance(1.5)
        await cache.set("k", b"v", 60)  # the probe succeeds: Redis again
        primary.release.set()
        assert await stalled is None  # the old call fails late and answers from memory...
        assert cache.redis_up  # ...but does not switch a recovered cache back to memory
        await cache.close()

    run(scenario)
    assert changes == ["memory", "redis"]


def test_failover_cache_never_raises_even_with_a_broken_hook() -> None:
    def broken_hook(backend: str) -> None:
        raise RuntimeError(f"metrics are down ({backend})")

    async def scenario() -> None:
        primary = make_redis_cache(f"redis://127.0.0.1:{free_port()}/0")
        cache = FailoverCache(primary, MemoryCache(10), 0.0, on_state_change=broken_hook)
        await cache.set("k", b"v", 60)
        assert await cache.get("k") == b"v"
        await cache.delete("k")
        assert await cache.probe() is False
        assert cache.backend == "memory"
        await cache.close()

    run(scenario)


# --------------------------------------------------------------------------------------------
# build_cache


def test_build_cache_is_memory_only_without_url() -> None:
    async def scenario() -> None:
        cache = await build_cache(RedisSettings(url=None), CacheSettings(memory_max_entries=3))
        assert isinstance(cache, MemoryCache)
        assert cache.backend == "memory"
        await cache.close()

    run(scenario)


def test_build_cache_starts_on_memory_when_redis_is_down() -> None:
    async def scenario() -> None:
        settings = RedisSettings(url=f"redis://127.0.0.1:{free_port()}/0", connect_timeout_ms=200)
        cache = await build_cache(settings, CacheSettings())
        assert isinstance(cache, FailoverCache)
        assert (cache.backend, cache.redis_up) == ("memory", False)
        await cache.set("k", b"v", 60)
        assert await cache.get("k") == b"v"
        await cache.close()

    run(scenario)


def test_build_cache_uses_redis_when_it_answers(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        settings = RedisSettings(url=redis_server.url, op_timeout_ms=GENEROUS_MS, prefix="ar")
        cache = await build_cache(settings, CacheSettings())
        assert cache.backend == "redis"
        await cache.set("k", b"v", 60)
        await cache.close()

    run(scenario)
    with redis.Redis.from_url(redis_server.url) as raw:
        assert raw.get("ar:cache:k") == b"v"


# --------------------------------------------------------------------------------------------
# Request cache keys

BASE_BODY: dict[str, Any] = {
    "model": "openai/gpt-4o-mini",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+2?"},
    ],
    "temperature": 0,
    "max_tokens": 64,
}

ANSWER_FIELDS = [
    "model",
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "seed",
    "tools",
    "tool_choice",
    "response_format",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "n",
    "top_k",  # a parameter the key has no list entry for still counts
]

JSON_SCALARS = st.one_of(st.booleans(), st.integers(), st.text(max_size=8))
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)


def reordered(mapping: dict[str, Any], data: st.DataObject) -> dict[str, Any]:
    keys = data.draw(st.permutations(list(mapping)))
    return {key: mapping[key] for key in keys}


def test_request_cache_key_is_versioned_sha256() -> None:
    key = request_cache_key(BASE_BODY, None)
    assert re.fullmatch(r"v1:[0-9a-f]{64}", key)
    assert key == request_cache_key(dict(BASE_BODY), {})


@given(st.data(), st.booleans(), st.text(max_size=8))
def test_request_cache_key_ignores_order_and_neutral_fields(
    data: st.DataObject, stream: bool, user: str
) -> None:
    route = {"mode": "speed", "max_cost": 0.01, "allow": ["a", "b"]}
    messages = [reordered(message, data) for message in BASE_BODY["messages"]]
    other = reordered({**BASE_BODY, "messages": messages}, data)
    other.update(stream=stream, user=user, metadata={"trace": user}, stream_options={"include_usage": True})
    assert request_cache_key(other, reordered(route, data)) == request_cache_key(BASE_BODY, route)


def test_request_cache_key_normalises_equivalent_spellings() -> None:
    base = request_cache_key({**BASE_BODY, "stop": ["END"], "seed": 7}, None)
    assert request_cache_key({**BASE_BODY, "stop": "END", "seed": 7.0}, None) == base
    assert request_cache_key({**BASE_BODY, "stop": ["END"], "seed": 7, "top_p": None}, None) == base
    assert request_cache_key({**BASE_BODY, "temperature": 0.0}, None) == request_cache_key(BASE_BODY, None)
    trailing = {
        **BASE_BODY,
        "messages": [BASE_BODY["messages"][0], {"role": "user", "content": "What is 2+2?\n "}],
    }
    assert request_cache_key(trailing, None) == request_cache_key(BASE_BODY, None)
    parts = [{"type": "text", "text": "hi "}, {"type": "image_url", "image_url": {"url": "data:x"}}]
    stripped = [{"type": "text", "text": "hi"}, parts[1]]
    assert request_cache_key({"messages": [{"role": "user", "content": parts}]}, None) == request_cache_key(
        {"messages": [{"role": "user", "content": stripped}]}, None
    )


@settings(max_examples=200)
@given(st.sampled_from(ANSWER_FIELDS), JSON_VALUES, JSON_VALUES)
def test_request_cache_key_changes_with_every_answer_field(field: str, first: Any, second: Any) -> None:
    if field == "stop" and isinstance(first, str):
        first = [first]
    if field == "stop" and isinstance(second, str):
        second = [second]
    if first == second:
        second = [second, "different"]
    assert request_cache_key({**BASE_BODY, field: first}, None) != request_cache_key(
        {**BASE_BODY, field: second}, None
    )
    without = {k: v for k, v in BASE_BODY.items() if k != field}
    assert request_cache_key(without, None) != request_cache_key({**without, field: first}, None)


@given(st.text(max_size=20), st.text(max_size=20))
def test_request_cache_key_changes_with_message_text(first: str, second: str) -> None:
    def body(text: str) -> dict[str, Any]:
        return {**BASE_BODY, "messages": [{"role": "user", "content": text}]}

    same = first.rstrip() == second.rstrip()
    assert (request_cache_key(body(first), None) == request_cache_key(body(second), None)) == same


def test_request_cache_key_changes_with_messages_and_route() -> None:
    base = request_cache_key(BASE_BODY, {"mode": "speed"})
    user = {"role": "user", "content": "What is 2+2?"}
    variants = [
        ({**BASE_BODY, "messages": [{"role": "assistant", "content": "What is 2+2?"}]}, {"mode": "speed"}),
        ({**BASE_BODY, "messages": [*BASE_BODY["messages"], user]}, {"mode": "speed"}),
        ({**BASE_BODY, "messages": BASE_BODY["messages"][::-1]}, {"mode": "speed"}),
        ({**BASE_BODY, "messages": [{**user, "name": "bob"}]}, {"mode": "speed"}),
        (BASE_BODY, {"mode": "cost"}),
        (BASE_BODY, None),
        (BASE_BODY, {"mode": "speed", "max_latency_ms": 500}),
    ]
    keys = {request_cache_key(body, route) for body, route in variants}
    assert base not in keys
    assert len(keys) == len(variants)


# --------------------------------------------------------------------------------------------
# is_cacheable


@pytest.mark.parametrize(
    ("body", "opt_in", "expected"),
    [
        ({"temperature": 0}, False, True),
        ({"temperature": 0.0}, False, True),
        ({"temperature": 0, "stream": True}, False, True),  # replayed as a stream
        ({"temperature": 0, "n": 3}, False, True),  # n is part of the key
        ({}, False, False),  # OpenAI's default temperature is 1
        ({"temperature": None}, False, False),
        ({"temperature": 0.7}, False, False),
        ({"temperature": 0.7, "seed": 42}, False, False),
        ({"temperature": False}, False, False),
        ({"temperature": "0"}, False, False),
        ({"temperature": 1.2}, True, True),
        ({}, True, True),
    ],
)
def test_is_cacheable_only_reproducible_requests(body: dict[str, Any], opt_in: bool, expected: bool) -> None:
    assert is_cacheable(body, opt_in) is expected
