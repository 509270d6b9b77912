"""How much of an upstream's answer the router reads before it calls the answer a failure.

A whole non-streamed answer and one line or event of a stream are capped
(``limits.upstream_answer_bytes``, ``limits.upstream_event_bytes``); over a cap the read stops
at once (never buffering more than the cap and one network chunk) and the attempt fails like a
garbled answer: the next candidate is tried and the model's breaker counts it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import httpx

__all__ = ["DEFAULT_LIMITS", "Limits", "acquire_slot", "read_capped", "read_response"]


@dataclass(frozen=True, slots=True)
class Limits:
    """How much of an upstream's answer is read, and how deeply nested, before it is a failure
    (the defaults of ``settings.limits``)."""

    answer_bytes: int = 8 * 1024 * 1024  # a whole non-streamed answer
    event_bytes: int = 1024 * 1024  # one line or event of a stream
    json_depth: int = 64  # arrays and objects nested in an answer or an event


DEFAULT_LIMITS = Limits()


async def read_capped(chunks: AsyncIterator[bytes], limit: int, declared: str | None = None) -> bytes:
    """The body from ``chunks``; httpx's ``DecodingError`` (an undecodable answer, as the client
    maps it) as soon as it passes ``limit`` bytes, or when its ``Content-Length``, ``declared``,
    already says it will."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise httpx.DecodingError(f"answer of {declared} bytes exceeds the limit of {limit}")
    parts, size = [], 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise httpx.DecodingError(f"answer exceeds the limit of {limit} bytes")
        parts.append(chunk)
    return b"".join(parts)


async def read_response(response: httpx.Response, limit: int) -> bytes:
    """A response's (decoded) body, refused as soon as it passes ``limit`` bytes."""
    return await read_capped(response.aiter_bytes(), limit, response.headers.get("content-length"))


async def acquire_slot(slots: asyncio.Semaphore, timeout: Mapping[str, float | None]) -> None:
    """A slot, waiting at most ``pool`` + ``connect`` (aiohttp's bound on getting a connection)."""
    if not slots.locked():
        await slots.acquire()
        return
    pool, connect = timeout.get("pool"), timeout.get("connect")
    wait = None if pool is None else pool + (connect or 0.0)
    try:
        async with asyncio.timeout(wait):
            await slots.acquire()
    except TimeoutError as exc:
        raise httpx.ConnectTimeout("no free connection in the pool in time") from exc
