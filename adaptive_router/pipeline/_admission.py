"""Admission checks beyond the budget's verdict: what a request may cost at worst (held against
the budget before any model is called), and a pinned model that is unavailable."""

from __future__ import annotations

import math
from collections.abc import Sequence

from .._errors import ApiError
from ..core._catalogue import Catalogue
from ..core._decision import RouteRequest
from ..upstream._execution import Breakers

__all__ = ["pinned_unavailable", "worst_case_usd"]


def worst_case_usd(
    catalogue: Catalogue,
    chain: Sequence[str],
    prompt_tokens: int,
    max_tokens: int | None,
    default_output_tokens: int,
) -> float:
    """The dearest candidate of ``chain`` answering at full length: the prompt estimate plus
    ``max_tokens`` (else the model's own output cap, else ``default_output_tokens``), each at
    that model's prices. Only one candidate answers, so the dearest one bounds the request."""
    worst = 0.0
    for model in chain:
        row = catalogue.index.get(model)
        if row is None:
            continue
        cap = float(catalogue.max_output_tokens[row])
        answer = max_tokens
        if answer is None:
            answer = int(cap) if math.isfinite(cap) else default_output_tokens
        prompt_usd = float(catalogue.price_prompt[row]) * prompt_tokens
        worst = max(worst, prompt_usd + float(catalogue.price_completion[row]) * answer)
    return worst


def pinned_unavailable(breakers: Breakers, route: RouteRequest) -> ApiError | None:
    """A model the client pinned with ``route.fallback: false`` whose breaker is open: a 503 with
    the breaker's reopen time (the client asked for that model only; another is no answer)."""
    if route.model is None or route.fallback:
        return None
    wait = breakers.reopens_in(route.model)
    if wait is None:
        return None
    return ApiError(
        503,
        f"model {route.model!r} is unavailable (its circuit breaker is open) for {wait:.0f} s more "
        "and route.fallback is false; retry later, or allow fallback",
        "model",
        "service_unavailable",
        "model_unavailable",
        {"retry-after": str(max(1, math.ceil(wait)))},
    )
