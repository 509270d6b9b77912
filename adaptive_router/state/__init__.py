"""State shared across requests and replicas: the response cache, shared learning through Redis,
daily budgets, and answered request ids for feedback."""

from __future__ import annotations

from .._topology import (
    REDIS_FAULTS,
    RedisClient,
    RedisTarget,
    describe,
    parse_redis_url,
    prepare,
    redis_client,
)
from ._budget import Budget, BudgetSnapshot, Spend, Verdict, key_hash, price_mask
from ._cache import (
    ANSWER_NEUTRAL_FIELDS,
    Cache,
    FailoverCache,
    MemoryCache,
    RedisCache,
    build_cache,
    is_cacheable,
    redis_topology,
    request_cache_key,
)
from ._feedback import Answered, FeedbackStore, owner_of
from ._redis import redis_call
from ._shared import Periodic, SharedState, SyncStats, hash_tag, run_script
from ._wire import WIRE_VERSION, Published, WireEvent, decode_state, encode_state

__all__ = [
    "ANSWER_NEUTRAL_FIELDS",
    "REDIS_FAULTS",
    "WIRE_VERSION",
    "Answered",
    "Budget",
    "BudgetSnapshot",
    "Cache",
    "FailoverCache",
    "FeedbackStore",
    "MemoryCache",
    "Periodic",
    "Published",
    "RedisCache",
    "RedisClient",
    "RedisTarget",
    "SharedState",
    "Spend",
    "SyncStats",
    "Verdict",
    "WireEvent",
    "build_cache",
    "decode_state",
    "describe",
    "encode_state",
    "hash_tag",
    "is_cacheable",
    "key_hash",
    "owner_of",
    "parse_redis_url",
    "prepare",
    "price_mask",
    "redis_call",
    "redis_client",
    "redis_topology",
    "request_cache_key",
    "run_script",
]
