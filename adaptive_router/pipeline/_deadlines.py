"""Time limits of a request: its total deadline, and the shutdown that cuts every request short.

    drain = Drain()
    async with drain.bounded(loop_deadline):   # TimeoutError at the deadline, or when draining
        payload = await anext(events)
    drain.begin(after_s=24.0)                  # SIGTERM: everything bounded ends by then

A stream cannot sit inside one ``asyncio.timeout`` (it yields to its reader between events), so
each wait for the next event is bounded on its own; the timeouts waiting right now are kept, so
that a shutdown moves them all forward at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from .._errors import ApiError

__all__ = ["Drain", "drain_after", "error_event", "timed_out"]

log = logging.getLogger("adaptive_router.pipeline")


def drain_after(grace_s: float) -> float:
    """When open requests are cut after SIGTERM: a second (at most half the grace) before the
    grace period ends, kept for saving learned state and closing connections."""
    return grace_s - min(1.0, grace_s / 2)


class Drain:
    """The shutdown's cut-off, once begun, and the bounded waits it moves forward."""

    def __init__(self) -> None:
        self.closing_at: float | None = None  # loop time; None while serving normally
        self._waiting: set[asyncio.Timeout] = set()

    @property
    def draining(self) -> bool:
        return self.closing_at is not None

    def cut_off(self, deadline: float) -> bool:
        """Whether a wait bounded by ``deadline`` ended because of the shutdown."""
        return self.closing_at is not None and self.closing_at <= deadline

    def begin(self, after_s: float) -> None:
        """Shutting down: every bounded wait ends ``after_s`` from now at the latest."""
        loop = asyncio.get_running_loop()
        closing = loop.time() + after_s
        if self.closing_at is not None and self.closing_at <= closing:
            return
        self.closing_at = closing
        log.warning("shutting down: open requests end within %.1f s", after_s)
        for timeout in list(self._waiting):
            when = timeout.when()
            if when is None or when > closing:
                timeout.reschedule(closing)

    @contextlib.asynccontextmanager
    async def bounded(self, deadline: float) -> AsyncIterator[None]:
        """Raise TimeoutError in the block at ``deadline`` (loop time) or at the shutdown cut-off."""
        when = deadline if self.closing_at is None else min(deadline, self.closing_at)
        async with asyncio.timeout_at(when) as timeout:
            self._waiting.add(timeout)
            try:
                yield
            finally:
                self._waiting.discard(timeout)


def timed_out(drain: Drain, deadline: float, request_timeout_s: float) -> ApiError:
    """The answer to a request cut short at ``deadline``: by the shutdown (503, retry
    elsewhere), or by its own total deadline (504)."""
    if drain.cut_off(deadline):
        return ApiError(
            503, "the router is shutting down; retry the request", None, "server_error", "shutting_down"
        )
    return ApiError(
        504,
        f"the request did not finish within its total deadline of {request_timeout_s:g} s "
        "(upstream.request_timeout_s)",
        None,
        "timeout_error",
        "deadline_exceeded",
    )


def error_event(exc: ApiError) -> dict[str, Any]:
    """The last event of a stream cut short: OpenAI's error shape."""
    return {"error": {"message": str(exc), "type": exc.kind, "code": exc.code}}
