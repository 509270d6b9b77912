"""Which models a router may choose: providers, routing.allow/deny, declared models, 429 pauses."""

from __future__ import annotations

import asyncio

import pytest

from adaptive_router import (
    Catalogue,
    ConfigError,
    Model,
    NoEligibleModel,
    Router,
    RouteRequest,
    UpstreamStatusError,
    load_settings,
)
from adaptive_router.upstream import Breakers, Completion, Executor

LOCAL = {"local": {"base_url": "http://127.0.0.1:9/v1", "models": ["local/*"]}}


def catalogue() -> Catalogue:
    return Catalogue(
        [
            Model("local/a", 1e-7, 2e-7, 32_000, ttft_s=0.3, tpot_s=0.01),
            Model("cloud/b", 1e-8, 2e-8, 32_000, ttft_s=0.1, tpot_s=0.005, quality=0.9),
            Model("cloud/c:free", 0.0, 0.0, 32_000, ttft_s=0.1, tpot_s=0.005, quality=0.9),
        ],
        source="test",
    )


def test_models_no_provider_serves_are_never_ranked() -> None:
    router = Router.from_settings(load_settings(upstream={"providers": LOCAL}), catalogue())
    ranked = [c.model for c in router.rank(RouteRequest(prompt="hi", mode="speed")).candidates]
    assert ranked == ["local/a"]  # cloud/b is better on every term, but nothing serves it


def test_free_variants_are_denied_by_default_and_allow_applies_globally() -> None:
    router = Router.from_settings(load_settings(), catalogue())  # simulated: everything routable
    assert "cloud/c:free" not in [c.model for c in router.rank(RouteRequest(prompt="hi")).candidates]
    only = Router.from_settings(load_settings(routing={"allow": ["local/*"]}), catalogue())
    assert only.decide(RouteRequest(prompt="hi", mode="speed")).chain == ["local/a"]
    with pytest.raises(NoEligibleModel):
        only.decide(RouteRequest(prompt="hi", allow=("cloud/*",)))


def test_unroutable_fallback_model_stops_start_up_naming_it() -> None:
    settings = load_settings(upstream={"providers": LOCAL}, routing={"fallback_models": ["cloud/b"]})
    with pytest.raises(ConfigError, match="cloud/b") as info:
        Router.from_settings(settings, catalogue())
    assert info.value.key == "routing.fallback_models"
    with pytest.raises(ConfigError, match="nope/x"):
        Router.from_settings(load_settings(routing={"fallback_models": ["nope/x"]}), catalogue())


def test_declared_models_join_the_catalogue_and_close_the_chain() -> None:
    settings = load_settings(
        catalogue={"models": [{"id": "ollama/llama3.1", "context_length": 131072, "ttft_s": 0.2}]},
        upstream={"providers": {"local": {"base_url": "http://127.0.0.1:9/v1", "models": ["ollama/*"]}}},
        routing={"fallback_models": ["ollama/llama3.1"]},
    )
    router = Router.from_settings(settings)
    assert router.catalogue.model("ollama/llama3.1").ttft_s == 0.2
    assert router.decide(RouteRequest(prompt="hi")).chain == ["ollama/llama3.1"]


class _RateLimited:
    """An upstream client whose first model answers 429 with Retry-After, the rest answer."""

    def __init__(self, limited: str) -> None:
        self.limited = limited
        self.calls: list[str] = []

    async def complete(self, model_id: str, body: dict, timeout_s: float):  # type: ignore[no-untyped-def,type-arg]
        self.calls.append(model_id)
        if model_id == self.limited:
            raise UpstreamStatusError(model_id, 429, b"{}", {"retry-after": "30"})
        return Completion(model_id, "p", 200, {}, 0.01, None, 1, 5, None, {})


def test_a_429_with_retry_after_pauses_the_model_without_counting_a_failure() -> None:
    now = [100.0]
    router = Router.from_settings(load_settings(), catalogue())
    head = router.decide(RouteRequest(prompt="hi", mode="speed")).model
    client = _RateLimited(head)
    breakers = Breakers(router, failures=5, cooldown_s=30, clock=lambda: now[0])
    executor = Executor(router, client, breakers, attempt_timeout_s=5, max_attempts=4)  # type: ignore[arg-type]
    decision = router.decide(RouteRequest(prompt="hi", mode="speed"))
    evidence = router.learner.estimates(router.clock()).evidence.sum()
    result = asyncio.run(executor.complete(decision, {"messages": []}, 5.0))
    assert result.completion is not None and result.model != head  # the next candidate answered
    assert breakers.state(head) == "open"
    assert router.decide(RouteRequest(prompt="hi", mode="speed")).model != head  # not chosen meanwhile
    # the 429 was not learned as a failure of the model: only the answer that came back was
    assert router.learner.estimates(router.clock()).evidence.sum() == pytest.approx(evidence + 1, rel=1e-3)
    now[0] += 31
    breakers.refresh()
    assert breakers.state(head) == "half_open"
