"""What the router reads off a request before it scores: the text to profile, the weights, the
fast-path rule's changes, and the key under which a deterministic decision may be reused."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from .._errors import RequestError
from ._decision import RouteRequest
from ._profile import Profile

__all__ = ["decision_key", "fast_route", "message_text", "normalise_weights"]


def fast_route(request: RouteRequest, profile: Profile) -> RouteRequest:
    """A matching fast-path rule fills what the client left unset: mode, allow-list, model."""
    route = profile.route
    if route is None:
        return request
    changes: dict[str, Any] = {}
    if route.mode is not None and request.mode in (None, "default") and request.weights is None:
        changes["mode"] = route.mode
    if route.allow and not request.allow:
        changes["allow"] = route.allow
    if route.model is not None and request.model is None:
        changes["model"] = route.model
    return dataclasses.replace(request, **changes) if changes else request


def decision_key(request: RouteRequest, profile: Profile, available_version: int) -> tuple[Any, ...]:
    return (
        request.mode,
        request.weights,
        profile.cell,
        profile.bucket,
        request.max_tokens,
        request.max_latency_ms,
        request.max_ttft_ms,
        request.max_cost_usd,
        request.capabilities,
        request.allow,
        request.deny,
        request.model,
        request.fallback,
        id(request.mask) if request.mask is not None else None,
        available_version,
    )


def normalise_weights(weights: tuple[float, float, float]) -> tuple[float, float, float]:
    if len(weights) != 3 or any(not math.isfinite(w) or w < 0 for w in weights):
        raise RequestError("weights", "latency, cost and quality weights must be finite and >= 0")
    total = sum(weights)
    if total <= 0:
        raise RequestError("weights", "weights must not all be zero")
    return (weights[0] / total, weights[1] / total, weights[2] / total)


def message_text(messages: Sequence[Mapping[str, Any]]) -> tuple[str, int]:
    """The last user turn (what the task is about) and the character count of all turns."""
    chars, last_user = 0, ""
    for message in messages:
        text = _content_text(message.get("content"))
        chars += len(text)
        if message.get("role") == "user":
            last_user = text
    return last_user, chars


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(p.get("text", "")) for p in content if isinstance(p, Mapping) and p.get("type") == "text"
        )
    return ""
