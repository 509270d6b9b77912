"""The cache: one small async protocol, three backends, and the response-cache key.

    Cache (protocol)          get / set / delete / close, and ``backend`` ("memory" or "redis")
    ├── MemoryCache           LRU + per-entry TTL in an OrderedDict; never blocks, never raises
    ├── RedisCache            namespaced keys, every call bounded by a hard timeout; raises
    │                         CacheUnavailable when Redis does not answer
    └── FailoverCache         Redis while it answers, memory otherwise, Redis again after
                              ``retry_after_s`` (one probe at a time); never raises

Start-up builds one of them from the settings:

    cache = await build_cache(settings.redis, settings.cache)
    key = request_cache_key(body, route_options)
    if is_cacheable(body, opt_in=False):
        hit = await cache.get(key)
        ...
        await cache.set(key, answer_bytes, settings.cache.ttl_seconds)
    await cache.close()

The cache stores opaque bytes; what goes in them (and the ``max_value_bytes`` cap) is the
caller's business.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol, TypeVar, runtime_checkable

from .._errors import CacheUnavailable, ConfigError
from .._settings import CacheSettings, RedisSettings
from .._topology import RedisClient, describe, prepare, redis_client
from ._redis import redis_call

__all__ = [
    "ANSWER_NEUTRAL_FIELDS",
    "Cache",
    "FailoverCache",
    "MemoryCache",
    "RedisCache",
    "build_cache",
    "cache_prefix",
    "is_cacheable",
    "redis_client",
    "redis_topology",
    "request_cache_key",
]

logger = logging.getLogger("adaptive_router.cache")

T = TypeVar("T")


@runtime_checkable
class Cache(Protocol):
    """What the router needs from a cache. ``backend`` names what serves right now."""

    @property
    def backend(self) -> str: ...

    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, ttl_s: float) -> None: ...

    async def delete(self, key: str) -> None: ...

    async def close(self) -> None: ...


# --------------------------------------------------------------------------------------------
# Memory


class MemoryCache:
    """An LRU of at most ``max_entries`` values, each with its own TTL. Every operation is O(1).

    Expired entries are dropped when read; until then they age out through the LRU order like
    any other entry, so memory stays bounded by ``max_entries``.

        cache = MemoryCache(1000)
        await cache.set("k", b"v", ttl_s=60)
        await cache.get("k")  # b"v"
    """

    def __init__(self, max_entries: int, clock: Callable[[], float] = time.monotonic) -> None:
        if max_entries < 1:
            raise ConfigError("cache.memory_max_entries", "must be at least 1")
        self._max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    @property
    def backend(self) -> str:
        return "memory"

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires_at, value = entry
        if expires_at <= self._clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        if ttl_s <= 0:
            # Already expired: the same outcome as Redis would give, without storing anything.
            self._entries.pop(key, None)
            return
        self._entries[key] = (self._clock() + ttl_s, value)
        self._entries.move_to_end(key)
        if len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    async def delete(self, key: str) -> None:
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()

    async def close(self) -> None:
        self._entries.clear()


# --------------------------------------------------------------------------------------------
# Redis


def hard_timeout_s(connect_timeout_ms: float, op_timeout_ms: float) -> float:
    """The bound on one cache call: a fresh connection costs a connect, one pipelined
    handshake round trip, then the command itself, each bounded by its own socket timeout."""
    return (connect_timeout_ms + 2.0 * op_timeout_ms) / 1000.0


class RedisCache:
    """Values under ``<prefix>:<key>`` in Redis, each call bounded by ``timeout_s`` (None: only
    the client's socket timeouts bound it). Any Redis fault raises :class:`CacheUnavailable`.

        cache = RedisCache(redis_client("redis://127.0.0.1:6380/0", 50, 5), "adaptive-router:cache")

    ``client`` may be a plain, Sentinel-managed or cluster client (:func:`redis_client`).
    """

    def __init__(self, client: RedisClient, prefix: str, *, timeout_s: float | None = None) -> None:
        self._client = client
        self._prefix = prefix
        self._timeout_s = timeout_s

    @property
    def backend(self) -> str:
        return "redis"

    @property
    def prefix(self) -> str:
        return self._prefix

    def _key(self, key: str) -> str:
        return f"{self._prefix}:{key}"

    async def _call(self, op: str, awaitable: Awaitable[T]) -> T:
        return await redis_call(op, awaitable, self._timeout_s, CacheUnavailable)

    async def ping(self) -> None:
        await self._call("ping", self._client.ping())

    async def get(self, key: str) -> bytes | None:
        value = await self._call("get", self._client.get(self._key(key)))
        if isinstance(value, str):  # only if someone built the client with decode_responses
            return value.encode()
        return value

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        if ttl_s <= 0:
            await self.delete(key)
            return
        ttl_ms = max(1, math.ceil(ttl_s * 1000.0))
        await self._call("set", self._client.set(self._key(key), value, px=ttl_ms))

    async def delete(self, key: str) -> None:
        await self._call("delete", self._client.delete(self._key(key)))

    async def topology(self, timeout_s: float = 0.5) -> dict[str, Any]:
        """Which Redis this cache uses (single, sentinel, cluster), for ``/ready``; never raises."""
        return await describe(self._client, timeout_s)

    async def close(self) -> None:
        await redis_call("close", self._client.aclose(), None, CacheUnavailable)


# --------------------------------------------------------------------------------------------
# Failover


class FailoverCache:
    """Redis while it answers, memory when it does not; never raises to the caller.

    On the first fault it logs once, calls ``on_state_change("memory")`` and serves from
    memory. Once ``retry_after_s`` has passed, the next operation probes Redis (only one at a
    time; concurrent operations stay on memory meanwhile); success switches back, logs,
    calls ``on_state_change("redis")`` and empties the memory fallback so that values written
    during an outage cannot resurface later. Values written to memory are not migrated.

        cache = FailoverCache(RedisCache(client, "app:cache"), MemoryCache(10_000), retry_after_s=2.0)
        await cache.set("k", b"v", 60)  # never raises
        cache.backend                   # "redis" or "memory"
    """

    def __init__(
        self,
        primary: RedisCache,
        fallback: MemoryCache,
        retry_after_s: float,
        clock: Callable[[], float] = time.monotonic,
        on_state_change: Callable[[str], None] | None = None,
    ) -> None:
        self._primary = primary
        self._fallback = fallback
        self._retry_after_s = retry_after_s
        self._clock = clock
        self._on_state_change = on_state_change
        self._redis_up = True
        self._down_since = 0.0
        self._probing = False
        # Bumped at every switch, so that a call which started before a switch cannot undo it.
        self._epoch = 0

    @property
    def backend(self) -> str:
        return self._primary.backend if self._redis_up else self._fallback.backend

    @property
    def redis_up(self) -> bool:
        return self._redis_up

    async def get(self, key: str) -> bytes | None:
        return await self._run(lambda cache: cache.get(key))

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        await self._run(lambda cache: cache.set(key, value, ttl_s))

    async def delete(self, key: str) -> None:
        await self._run(lambda cache: cache.delete(key))

    async def probe(self) -> bool:
        """Ping Redis now (unless a probe is already out), switch accordingly, say if it is up."""
        if self._probing:
            return self._redis_up
        epoch = self._epoch
        self._probing = True
        try:
            await self._primary.ping()
        except Exception as exc:  # never-raise boundary: the answer is "down", not an error
            if self._redis_up:
                self._switch_to_memory(epoch, exc)
            else:
                self._down_since = self._clock()
        else:
            self._switch_to_redis()
        finally:
            self._probing = False
        return self._redis_up

    async def topology(self, timeout_s: float = 0.5) -> dict[str, Any]:
        """The Redis topology behind the cache, for ``/ready`` (one bounded call; never raises)."""
        return await self._primary.topology(timeout_s)

    async def close(self) -> None:
        try:
            await self._primary.close()
        except Exception:  # never-raise boundary: shutting down must not fail on a dead Redis
            logger.debug("cache: closing the Redis client failed", exc_info=True)
        await self._fallback.close()

    async def _run(self, op: Callable[[Cache], Awaitable[T]]) -> T:
        if self._redis_up:
            return await self._run_primary(op)
        if not self._probing and self._clock() - self._down_since >= self._retry_after_s:
            return await self._run_probe(op)
        return await op(self._fallback)

    async def _run_primary(self, op: Callable[[Cache], Awaitable[T]]) -> T:
        epoch = self._epoch
        try:
            return await op(self._primary)
        except Exception as exc:  # never-raise boundary: any Redis trouble means "use memory"
            self._switch_to_memory(epoch, exc)
        return await op(self._fallback)

    async def _run_probe(self, op: Callable[[Cache], Awaitable[T]]) -> T:
        self._probing = True
        try:
            result = await op(self._primary)
        except Exception as exc:  # never-raise boundary: a failed probe just restarts the wait
            self._down_since = self._clock()
            logger.debug("cache: Redis still unavailable: %s", exc)
        else:
            self._switch_to_redis()
            return result
        finally:
            self._probing = False
        return await op(self._fallback)

    def _switch_to_memory(self, epoch: int, exc: Exception) -> None:
        if not self._redis_up or epoch != self._epoch:
            return
        self._redis_up = False
        self._epoch += 1
        self._down_since = self._clock()
        logger.warning(
            "cache: Redis unavailable (%s); serving from memory, retrying after %.1f s",
            exc,
            self._retry_after_s,
        )
        self._notify("memory")

    def _switch_to_redis(self) -> None:
        if self._redis_up:
            return
        self._redis_up = True
        self._epoch += 1
        self._fallback.clear()
        logger.warning("cache: Redis answers again; serving from Redis")
        self._notify("redis")

    def _notify(self, backend: str) -> None:
        if self._on_state_change is None:
            return
        try:
            self._on_state_change(backend)
        except Exception:  # never-raise boundary: a broken metrics hook must not fail a request
            logger.exception("cache: on_state_change(%r) raised", backend)


async def build_cache(
    redis: RedisSettings,
    cache: CacheSettings,
    *,
    on_state_change: Callable[[str], None] | None = None,
) -> Cache:
    """Memory only when ``redis.url`` is unset; otherwise Redis with a memory fallback.

    Starts fine when Redis is down: one bounded ping decides the initial backend.
    Keys live under ``<redis.prefix>:cache:``, apart from the shared learning state, with any
    ``{...}`` hash tag of the prefix taken out: on a Redis Cluster, cache entries spread over
    every slot (the learning state and the budgets, whose scripts need one slot, keep it).
    """
    memory = MemoryCache(cache.memory_max_entries)
    if redis.url is None:
        return memory
    client = redis_client(redis.url, redis.connect_timeout_ms, redis.op_timeout_ms)
    primary = RedisCache(
        client,
        f"{cache_prefix(redis.prefix)}:cache",
        timeout_s=hard_timeout_s(redis.connect_timeout_ms, redis.op_timeout_ms),
    )
    failover = FailoverCache(primary, memory, redis.retry_after_s, on_state_change=on_state_change)
    await prepare(client, max(1.0, 10 * hard_timeout_s(redis.connect_timeout_ms, redis.op_timeout_ms)))
    await failover.probe()
    return failover


async def redis_topology(cache: Cache | None, timeout_s: float = 0.5) -> dict[str, Any] | None:
    """For ``/ready``: the Redis topology behind ``cache`` (None without Redis); never raises."""
    if isinstance(cache, FailoverCache | RedisCache):
        return await cache.topology(timeout_s)
    return None


def cache_prefix(prefix: str) -> str:
    """``prefix`` without braces, so that no cache key carries a Redis Cluster hash tag."""
    return prefix.replace("{", "").replace("}", "")


# --------------------------------------------------------------------------------------------
# Response-cache keys

KEY_VERSION = "v1"

# Fields that never change the answer. Everything else in a request counts, including
# parameters this module has never heard of (vLLM's top_k, OpenRouter's provider...), so an
# unknown parameter can cost a cache miss but can never make two different requests share one.
ANSWER_NEUTRAL_FIELDS = frozenset(
    {
        "stream",
        "stream_options",
        "user",
        "metadata",
        "store",
        "service_tier",
        "request_id",
        "safety_identifier",
        "prompt_cache_key",
    }
)


def is_cacheable(body: Mapping[str, Any], opt_in: bool) -> bool:
    """Whether an answer to ``body`` may be served from, and stored in, the response cache.

    Only reproducible requests: ``temperature`` exactly 0, or the client opted in. A missing
    temperature is OpenAI's default of 1, so it is not cacheable; a ``seed`` alone is not
    enough (OpenAI calls seeded sampling "mostly" deterministic). ``stream`` does not matter:
    a cached answer is replayed as a stream, which is why the key ignores it. ``n`` does not
    matter either: it is part of the key.
    """
    if opt_in:
        return True
    temperature = body.get("temperature")
    if isinstance(temperature, bool) or not isinstance(temperature, int | float):
        return False
    return temperature == 0


def request_cache_key(body: Mapping[str, Any], route: Mapping[str, Any] | None) -> str:
    """``"v1:" + sha256`` over canonical JSON of the normalised request and routing options.

    Normalised: key order and answer-neutral fields (``ANSWER_NEUTRAL_FIELDS``) ignored, null
    fields treated as absent, trailing whitespace stripped from message text, a string
    ``stop`` treated as a one-element list, integral floats written as integers.

        request_cache_key({"model": "m", "messages": [{"role": "user", "content": "hi"}]}, None)
    """
    normalised = {"request": _normalise_body(body), "route": _drop_none(route or {})}
    payload = json.dumps(normalised, sort_keys=True, separators=(",", ":"))
    return f"{KEY_VERSION}:{hashlib.sha256(payload.encode('ascii')).hexdigest()}"


def _normalise_body(body: Mapping[str, Any]) -> dict[str, Any]:
    fields = {key: value for key, value in body.items() if key not in ANSWER_NEUTRAL_FIELDS}
    out = _drop_none(fields)
    messages = body.get("messages")
    if isinstance(messages, list | tuple):
        out["messages"] = [_normalise_message(message) for message in messages]
    stop = out.get("stop")
    if isinstance(stop, str):
        out["stop"] = [stop]
    return out


def _normalise_message(message: Any) -> Any:
    if not isinstance(message, Mapping):
        return _plain(message)
    out = _drop_none(message)
    content = out.get("content")
    if isinstance(content, str):
        out["content"] = content.rstrip()
    elif isinstance(content, list):
        out["content"] = [_normalise_part(part) for part in content]
    return out


def _normalise_part(part: Any) -> Any:
    plain = _plain(part)
    if isinstance(plain, dict) and plain.get("type") == "text" and isinstance(plain.get("text"), str):
        plain["text"] = plain["text"].rstrip()
    return plain


def _drop_none(mapping: Mapping[str, Any]) -> dict[str, Any]:
    return {str(key): _plain(value) for key, value in mapping.items() if value is not None}


def _plain(value: Any) -> Any:
    """JSON-ready copy: mappings to dicts, sequences to lists, 2.0 to 2 (the same value)."""
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value
