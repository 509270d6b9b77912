"""What an upstream answered, read and checked: a :class:`Completion`, or the
:mod:`adaptive_router._errors` exception for a failed call, a bad status or an error inside a 200."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from .._errors import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamStatusError,
    UpstreamTimeout,
)
from .._json import loads, too_deep

__all__ = [
    "Completion",
    "beyond_text",
    "completion_from",
    "delta_text",
    "finish_reason",
    "kept_headers",
    "map_error",
    "parse_object",
    "payload_error",
    "raise_for_payload",
    "translated",
    "usage_counts",
]

_MESSAGE_CHARS = 200
# Response headers worth keeping: ids to correlate with the provider's logs, and back-off hints.
_KEPT_HEADERS = frozenset({"x-generation-id", "x-request-id", "request-id", "retry-after", "content-type"})
_KEPT_PREFIXES = ("x-ratelimit-",)


# ---------------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class Completion:
    """What one successful call returned, and what it cost in time and tokens.

    ``data`` is the parsed JSON answer; for a stream it is a summary gathered from the chunks
    (``id``, ``model``, ``usage`` when seen). Token counts and ``cost_usd`` are ``None`` when the
    upstream did not report them (``cost_usd`` is OpenRouter's ``usage.cost``): the caller prices it.
    """

    model_id: str
    provider: str
    status: int
    data: dict[str, Any]
    latency_s: float
    ttft_s: float | None
    prompt_tokens: int | None
    completion_tokens: int | None
    cost_usd: float | None
    headers: dict[str, str]
    finish_reason: str | None = None
    done: bool = True
    text: str | None = None  # a stream's answer text, gathered from its deltas (None: see ``data``)
    beyond_text: bool = False  # a stream carried more than ``text`` (see ``beyond_text``)


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _amount(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0:
        return float(value)
    return None


def usage_counts(usage: object) -> tuple[int | None, int | None, float | None]:
    if not isinstance(usage, dict):
        return None, None, None
    return (
        _count(usage.get("prompt_tokens")),
        _count(usage.get("completion_tokens")),
        _amount(usage.get("cost")),
    )


def finish_reason(data: dict[str, Any]) -> str | None:
    choices = data.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        reason = choices[0].get("finish_reason")
        return reason if isinstance(reason, str) else None
    return None


def delta_text(chunk: dict[str, Any]) -> str | None:
    """The text a stream chunk adds (its first choice's ``delta.content``), or None."""
    choices = chunk.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        delta = choices[0].get("delta")
        if isinstance(delta, dict):
            content = delta.get("content")
            return content if isinstance(content, str) else None
    return None


_TEXT_DELTA = frozenset({"role", "content"})


def beyond_text(chunk: dict[str, Any]) -> bool:
    """Whether a stream chunk carries more than its first choice's text: another choice, log
    probabilities, or a delta field other than role and content with a value (tool calls,
    reasoning, a refusal, annotations, audio)."""
    choices = chunk.get("choices")
    if not isinstance(choices, list):
        return False
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        if choice.get("index", 0) != 0 or choice.get("logprobs") is not None:
            return True
        delta = choice.get("delta")
        if (
            isinstance(delta, dict)
            and not _TEXT_DELTA.issuperset(delta)  # the usual chunk stops here: role and content only
            and any(value not in (None, "", [], {}) for key, value in delta.items() if key not in _TEXT_DELTA)
        ):
            return True
    return False


def kept_headers(headers: Mapping[str, str]) -> dict[str, str]:
    kept = {}
    for name, value in headers.items():
        lower = name.lower()
        if lower in _KEPT_HEADERS or lower.startswith(_KEPT_PREFIXES):
            kept[lower] = value
    return kept


# ---------------------------------------------------------------------------------- errors


def map_error(model_id: str, exc: BaseException) -> UpstreamError:
    """Translate a transport-level failure.

    Only errors about the network (whose text comes from the OS or the peer) quote their message;
    the rest name their type alone, since a local protocol error quotes the offending header.
    """
    detail = type(exc).__name__
    quoted = httpx.NetworkError | httpx.TimeoutException | httpx.RemoteProtocolError | httpx.DecodingError
    if isinstance(exc, quoted):  # a decoder's message, or the router's size cap
        detail = f"{detail}: {str(exc)[:_MESSAGE_CHARS]}"
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return UpstreamConnectError(model_id, f"could not connect ({detail})")
    if isinstance(exc, TimeoutError | httpx.TimeoutException):
        return UpstreamTimeout(model_id, f"no answer within the timeout ({detail})")
    if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError | httpx.DecodingError):
        return UpstreamProtocolError(model_id, f"connection dropped or garbled ({detail})")
    return UpstreamConnectError(model_id, f"request failed ({detail})")


@contextlib.asynccontextmanager
async def translated(model_id: str, timeout_s: float) -> AsyncIterator[None]:
    """Bound the body by ``timeout_s`` in total, and map what httpx raises, in one place.

    ``asyncio.timeout`` rather than httpx's per-read timeouts: an upstream that trickles a byte at
    a time resets every read timeout but cannot outlast this one.
    """
    try:
        async with asyncio.timeout(timeout_s):
            yield
    except (TimeoutError, httpx.HTTPError, httpx.InvalidURL) as exc:
        raise map_error(model_id, exc) from exc


def _status_of(code: object) -> int | None:
    if isinstance(code, str) and code.isdigit():
        code = int(code)
    if isinstance(code, int) and not isinstance(code, bool) and 400 <= code <= 599:
        return code
    return None


def payload_error(model_id: str, error: object, raw: bytes, headers: dict[str, str]) -> UpstreamError:
    """An error reported inside a 200 answer or a stream event (OpenRouter: ``{"error": {code, message}}``).

    A numeric ``code`` is an HTTP status and keeps its retry rules; anything else is a protocol error.
    """
    code = error.get("code") if isinstance(error, dict) else None
    status = _status_of(code)
    if status is not None:
        return UpstreamStatusError(model_id, status, raw, headers)
    message = str(error.get("message", "")) if isinstance(error, dict) else str(error)
    return UpstreamProtocolError(model_id, f"upstream reported an error: {message[:_MESSAGE_CHARS]}")


def raise_for_payload(model_id: str, data: dict[str, Any], raw: bytes, headers: dict[str, str]) -> None:
    error = data.get("error")
    if error is not None:
        raise payload_error(model_id, error, raw, headers)
    choices = data.get("choices")
    for choice in choices if isinstance(choices, list) else ():
        # OpenRouter ends a failed stream with finish_reason "error"; a 200 answer may carry a
        # provider's error inside the choice the same way.
        if isinstance(choice, dict) and choice.get("finish_reason") == "error":
            raise payload_error(model_id, choice.get("error") or "finish_reason error", raw, headers)


def parse_object(model_id: str, raw: bytes, max_depth: int) -> dict[str, Any]:
    try:
        data = loads(raw)
    except (ValueError, RecursionError) as exc:
        raise UpstreamProtocolError(model_id, "answer is not JSON") from exc
    if not isinstance(data, dict):
        raise UpstreamProtocolError(model_id, "answer is not a JSON object")
    if too_deep(data, max_depth, raw) is not None:
        raise UpstreamProtocolError(model_id, f"answer is JSON nested deeper than {max_depth} levels")
    return data


def completion_from(
    model_id: str,
    provider: str,
    status: int,
    raw_headers: Mapping[str, str],
    content: bytes,
    latency_s: float,
    max_depth: int,
) -> Completion:
    headers = kept_headers(raw_headers)
    if not 200 <= status < 300:
        raise UpstreamStatusError(model_id, status, content, headers)
    data = parse_object(model_id, content, max_depth)
    raise_for_payload(model_id, data, content, headers)
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise UpstreamProtocolError(model_id, "answer has no choices")
    prompt, completion, cost = usage_counts(data.get("usage"))
    return Completion(
        model_id=model_id,
        provider=provider,
        status=status,
        data=data,
        latency_s=latency_s,
        ttft_s=None,
        prompt_tokens=prompt,
        completion_tokens=completion,
        cost_usd=cost,
        headers=headers,
        finish_reason=finish_reason(data),
    )
