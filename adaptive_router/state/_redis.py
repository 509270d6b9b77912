"""The one place where redis-py's errors become ours.

    value = await redis_call("get", client.get(key), timeout_s=0.05)   # or RedisUnavailable

Every Redis round trip of the package (response cache, shared learning, budgets) goes through
:func:`redis_call`: bounded by a hard timeout, and any Redis fault (refused, reset, timed out,
an error reply, or redis-py's own AttributeError or TypeError when a write races a closed
connection) raised as :class:`~adaptive_router.errors.RedisUnavailable` (or the subclass the
caller names), which each caller turns into "use local state". A cancelled command makes
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
    except (AttributeError, TypeError) as exc:
        if not _inside_the_client(exc):
            raise  # ours: a bug to see, not a fault to route around
        raise error(f"redis {op} failed: {exc!r}") from exc


def _inside_the_client(exc: BaseException) -> bool:
    """Whether ``exc`` was raised in redis-py's or asyncio's own code: a write racing a connection
    the peer closed leaks ``AttributeError``/``TypeError`` from there instead of a ConnectionError
    (redis-py issues 3546 and 4287), seen here as a 500 while a cluster master was down."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    module = tb.tb_frame.f_globals.get("__name__", "") if tb is not None else ""
    return isinstance(module, str) and module.startswith(("redis.", "asyncio."))
