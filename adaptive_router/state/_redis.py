"""The one place where redis-py's errors become ours.

    value = await redis_call("get", client.get(key), timeout_s=0.05)   # or RedisUnavailable

Every Redis round trip of the package (response cache, shared learning, budgets) goes through
:func:`redis_call`: bounded by a hard timeout, and any Redis fault (refused, reset, timed out,
an error reply) raised as :class:`~adaptive_router.errors.RedisUnavailable` (or the subclass
the caller names), which each caller turns into "use local state". A cancelled command makes
redis-py drop its connection, so the outer timeout cannot leave a stale reply behind.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from .._errors import RedisUnavailable
from .._topology import REDIS_FAULTS

__all__ = ["REDIS_FAULTS", "redis_call"]

T = TypeVar("T")


async def redis_call(
    op: str,
    awaitable: Awaitable[T],
    timeout_s: float | None,
    error: type[RedisUnavailable] = RedisUnavailable,
) -> T:
    """Await one Redis command within ``timeout_s``; a fault raises ``error`` naming ``op``."""
    try:
        async with asyncio.timeout(timeout_s):
            return await awaitable
    except REDIS_FAULTS as exc:
        raise error(f"redis {op} failed: {exc!r}") from exc
    except RuntimeError as exc:  # a write on a transport the loop closed under it (uvloop says so)
        raise error(f"redis {op} failed: {exc!r}") from exc
