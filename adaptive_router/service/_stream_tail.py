"""The end of a streamed answer: ``routing`` (with the request id) in the final chunk, and the
answered request remembered for ``/feedback`` (and cached, when it may be) before ``[DONE]`` leaves.

A stream's last chunk is the one with a ``finish_reason`` or, when the client asked for
usage, the usage chunk after it; both carry ``routing``, so whichever a client reads last has
it. Only those chunks are parsed; every other one passes through as bytes.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

from .._json import dumps, loads
from ..pipeline._pipeline import Call, Pipeline, Streamed

__all__ = ["with_routing"]

DONE = b"[DONE]"
_FINISHED = re.compile(rb'"finish_reason"\s*:\s*"')
_NO_CHOICES = re.compile(rb'"choices"\s*:\s*\[\s*\]')  # the usage chunk (others may carry "usage": null)


async def with_routing(pipeline: Pipeline, call: Call, streamed: Streamed) -> AsyncIterator[bytes]:
    """``streamed``'s events, the final chunk(s) with ``routing`` added."""
    routing = pipeline.routing(call)
    routing["model"] = streamed.handle.model_id
    async for payload in streamed.events():
        if payload == DONE:
            completion = streamed.handle.result()
            await pipeline.remember(call, completion)
            await pipeline.cache_stream(call, completion)
        elif _FINISHED.search(payload) or _NO_CHOICES.search(payload):
            payload = _add_routing(payload, {**routing, "attempts": _attempts(routing, streamed)})
        yield payload


def _attempts(routing: dict[str, Any], streamed: Streamed) -> list[dict[str, Any]]:
    """The attempts before the stream, then the stream's own: it has answered by its last chunk
    (the learner records it when the stream ends), as a plain answer's list ends with the one
    that answered."""
    so_far = streamed.handle.result()
    answering = {
        "model": so_far.model_id,
        "outcome": "ok",
        "latency_ms": round(so_far.latency_s * 1000.0, 2),
        "status": None,
        "error": None,
    }
    return [*routing["attempts"], answering]


def _add_routing(payload: bytes, routing: dict[str, Any]) -> bytes:
    try:
        chunk = loads(payload)
    except ValueError:
        return payload
    if not isinstance(chunk, dict) or not _is_last(chunk):
        return payload
    return dumps({**chunk, "routing": routing})


def _is_last(chunk: dict[str, Any]) -> bool:
    """A chunk that finishes the choice, or the usage chunk (no choices) after it."""
    choices = chunk.get("choices")
    if choices == []:
        return isinstance(chunk.get("usage"), dict)
    return isinstance(choices, list) and any(
        isinstance(c, dict) and c.get("finish_reason") is not None for c in choices
    )
