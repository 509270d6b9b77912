"""Why no model is eligible: the cold path that names the constraint that emptied the set.

The decision applies every constraint as one mask; only when none is left are the masks
replayed one at a time, in the order a user would relax them, to say which one it was and,
for a latency cap, what the fastest remaining candidate is expected to take.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import numpy as np
import numpy.typing as npt

from .._errors import NoEligibleModel, RequestError
from ._catalogue import CAPABILITIES, Catalogue, capability_bits
from ._decision import RouteRequest
from ._profile import Profile
from ._sums import Estimates

__all__ = ["required_bits", "why_none"]

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


def required_bits(names: Iterable[str]) -> int:
    """The capability bit mask for ``names``; an unknown name is the client's error."""
    try:
        return capability_bits(names)
    except KeyError as exc:
        raise RequestError(
            "capabilities", f"unknown capability {exc.args[0]!r}; known: {list(CAPABILITIES)}"
        ) from None


def why_none(
    cat: Catalogue,
    available: BoolArray,
    request: RouteRequest,
    profile: Profile,
    est: Estimates,
    *,
    latency_q: FloatArray,
    cost: FloatArray,
    out_tokens: float,
    quantile: float,
) -> NoEligibleModel:
    """Replay the masks one at a time; the error names the one that emptied the set."""
    need = profile.prompt_tokens + (request.max_tokens or 0)
    everything = np.ones(len(cat), dtype=np.bool_)
    mask = everything.copy()  # the latency advice reads the set as it stood before its cap
    bits = required_bits(request.capabilities)
    steps: list[tuple[str, BoolArray, Callable[[], str] | str]] = [
        (
            "max_tokens",  # alone too many for any window: its own fault, not the prompt's
            (request.max_tokens or 0) < cat.context_length,
            f"max_tokens={request.max_tokens} fills every model's context window "
            f"(largest: {cat.max_context})",
        ),
        (
            "context_length",
            need <= cat.context_length,
            f"no model has a context window for {need} tokens (largest: {cat.max_context})",
        ),
        ("available", available, "every model's circuit breaker is open"),
        (
            "budget",
            request.mask if request.mask is not None else everything,
            "near the spend cap only models under the price ceiling may serve, and none fits",
        ),
        (
            "max_tokens",
            cat.max_output_tokens >= (request.max_tokens or 0),
            f"no model can write max_tokens={request.max_tokens}",
        ),
        ("capabilities", (cat.capabilities & bits) == bits, f"no model has {sorted(request.capabilities)}"),
        (
            "allow",
            cat.glob_mask(request.allow) if request.allow else everything,
            f"no model matches allow={list(request.allow)}",
        ),
        ("deny", ~cat.glob_mask(request.deny), f"deny={list(request.deny)} excludes the rest"),
        (
            "max_latency_ms",
            latency_q <= (request.max_latency_ms or math.inf) / 1e3,
            _advice(cat, mask, latency_q, "max_latency_ms", request.max_latency_ms, out_tokens, quantile),
        ),
        (
            "max_ttft_ms",
            est.ttft_q <= (request.max_ttft_ms or math.inf) / 1e3,
            _advice(cat, mask, est.ttft_q, "max_ttft_ms", request.max_ttft_ms, out_tokens, quantile),
        ),
        (
            "max_cost_usd",
            cost <= (request.max_cost_usd if request.max_cost_usd is not None else math.inf),
            f"no remaining model is expected under ${request.max_cost_usd}",
        ),
    ]
    for name, step, message in steps:
        narrowed = mask & step
        if not narrowed.any():
            text = message if isinstance(message, str) else message()
            return NoEligibleModel(name, f"no eligible model: {text}")
        mask[...] = narrowed
    return NoEligibleModel("constraints", "no eligible model")


def _advice(
    cat: Catalogue,
    mask: BoolArray,
    latency: FloatArray,
    field: str,
    limit: float | None,
    out_tokens: float,
    quantile: float,
) -> Callable[[], str]:
    """The message for a latency cap that emptied the set: the fastest remaining model's
    estimate and what to relax (read lazily: ``mask`` is the set just before the cap)."""

    def message() -> str:
        rows = np.flatnonzero(mask)
        if rows.size == 0:
            return f"no remaining model is expected under {field}={limit}"
        best = int(rows[np.argmin(latency[rows])])
        whole = field == "max_latency_ms"
        what = f"{out_tokens:.0f}-token answer" if whole else "first token"
        hint = (
            "raise max_latency_ms, lower max_tokens, or cap max_ttft_ms instead"
            if whole
            else "raise max_ttft_ms"
        )
        return (
            f"no remaining model is expected under {field}={limit:g} (p{quantile * 100:.0f} "
            f"of a {what}); the fastest, {cat.ids[best]}, is expected at "
            f"{latency[best] * 1000:.0f} ms: {hint}"
        )

    return message
