"""Guards against hostile input that the handlers share: CORS only where configured, and the
``allow``/``deny`` globs of a request matched without holding the event loop.

Bodies themselves are guarded where they are read (:func:`~adaptive_router.service._http.read_json`:
size, depth, Content-Type) and validated (:mod:`~adaptive_router.service._schemas`: at most
``MAX_GLOBS`` globs of ``MAX_GLOB_CHARS`` each).
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Iterable

from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware

from ..core._catalogue import Catalogue

__all__ = ["cors_middleware", "prepare_globs"]

_EXPOSED = [
    "x-router-model",
    "x-router-attempts",
    "x-router-decision-us",
    "x-router-cache",
    "x-router-request-id",
    "x-router-upstream",
    "x-router-cost-usd",
]


def cors_middleware(origins: list[str]) -> list[Middleware]:
    """Starlette's CORS middleware for ``origins`` (``server.cors_origins``); none when empty, so
    no browser page on another origin can read an answer or send a JSON body."""
    if not origins:
        return []
    return [
        Middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST"],
            allow_headers=["authorization", "content-type", "x-request-id"],
            expose_headers=_EXPOSED,
        )
    ]


async def prepare_globs(catalogue: Catalogue, patterns: Iterable[str]) -> None:
    """Match each glob not yet cached against the catalogue, one glob at a time across every
    request of this event loop, pausing after each twice as long as it took: requests with many
    new globs queue behind each other and get at most a third of the loop's time, and a request
    without any waits at most one glob's matching (a few ms at worst) at each step."""
    new = [p for p in patterns if not catalogue.knows_glob(p)]
    if not new:
        return
    async with _turn():
        for pattern in new:
            started = time.perf_counter()
            catalogue.glob_mask((pattern,))
            await asyncio.sleep(_PAUSE * (time.perf_counter() - started))


_PAUSE = 2.0  # after each glob, this many times what it took
_TURNS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()


def _turn() -> asyncio.Lock:
    """The running loop's lock for glob matching (a lock belongs to one loop)."""
    loop = asyncio.get_running_loop()
    lock = _TURNS.get(loop)
    if lock is None:
        lock = _TURNS[loop] = asyncio.Lock()
    return lock
