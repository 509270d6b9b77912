"""The fallback chain and the circuit breakers, driven with a fake upstream and a fake clock."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from adaptive_router.catalogue import Catalogue, Model
from adaptive_router.errors import UpstreamError, UpstreamStatusError, UpstreamTimeout
from adaptive_router.execution import Breakers, Executor
from adaptive_router.router import Router, RouteRequest
from adaptive_router.settings import load_settings
from adaptive_router.simulate import SimClock
from adaptive_router.upstream import Completion

IDS = ["p/a", "p/b", "p/c"]


def make_router() -> Router:
    models = [
        Model(
            id=mid,
            price_prompt=1e-6 * (i + 1),
            price_completion=2e-6 * (i + 1),
            context_length=32_000,
            ttft_s=0.5,
            tpot_s=0.02,
            quality=0.6,
        )
        for i, mid in enumerate(IDS)
    ]
    settings = load_settings(exploration={"policy": "greedy", "seed": 0})
    return Router.from_settings(settings, Catalogue(models), clock=SimClock())


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def breakers(threshold: int = 3, cooldown_s: float = 10.0) -> tuple[Breakers, Router, Clock]:
    router, clock = make_router(), Clock()
    return Breakers(router, threshold, cooldown_s, clock=clock), router, clock


def test_breaker_opens_after_threshold_consecutive_failures() -> None:
    b, router, _ = breakers(threshold=3)
    b.failure("p/a")
    b.failure("p/a")
    assert b.state("p/a") == "closed" and b.allow("p/a")
    b.failure("p/a")
    assert b.state("p/a") == "open"
    assert not b.allow("p/a")
    assert not router.available[router.catalogue.index["p/a"]]


def test_breaker_success_resets_the_failure_count() -> None:
    b, _, _ = breakers(threshold=3)
    b.failure("p/a")
    b.failure("p/a")
    b.success("p/a")
    b.failure("p/a")
    b.failure("p/a")
    assert b.state("p/a") == "closed", "failures must be consecutive: a success in between resets them"
    b.failure("p/a")
    assert b.state("p/a") == "open"


def test_breaker_half_open_lets_one_probe_through() -> None:
    b, router, clock = breakers(threshold=1, cooldown_s=10.0)
    b.failure("p/a")
    clock.now = 9.9
    b.refresh()
    assert b.state("p/a") == "open"
    clock.now = 10.0
    b.refresh()
    assert b.state("p/a") == "half_open"
    assert router.available[router.catalogue.index["p/a"]]
    assert b.allow("p/a")
    assert not b.allow("p/a"), "only one probe at a time"


def test_breaker_release_frees_the_probe_slot() -> None:
    b, _, clock = breakers(threshold=1, cooldown_s=1.0)
    b.failure("p/a")
    clock.now = 1.0
    b.refresh()
    assert b.allow("p/a")
    b.release("p/a")  # the probing client went away: no verdict
    assert b.state("p/a") == "half_open"
    assert b.allow("p/a"), "a released probe slot must let the next request probe"


def test_breaker_probe_success_closes_and_failure_reopens() -> None:
    b, router, clock = breakers(threshold=2, cooldown_s=1.0)
    for model in ("p/a", "p/b"):
        b.failure(model)
        b.failure(model)
    clock.now = 1.0
    b.refresh()
    assert b.allow("p/a") and b.allow("p/b")
    b.success("p/a")
    b.failure("p/b")  # one failure while half-open is enough
    assert b.state("p/a") == "closed" and b.allow("p/a")
    assert b.state("p/b") == "open"
    assert b.snapshot() == {"p/b": "open"}
    assert not router.available[router.catalogue.index["p/b"]]


class FakeUpstream:
    """Answers per model from a script: an exception to raise, or a completion."""

    def __init__(self, script: dict[str, UpstreamError | None]) -> None:
        self.script = script
        self.calls: list[str] = []

    async def complete(self, model: str, body: dict[str, Any], timeout_s: float) -> Completion:
        self.calls.append(model)
        error = self.script.get(model)
        if error is not None:
            raise error
        data = {"id": "x", "model": model, "choices": [{"message": {"role": "assistant", "content": "ok"}}]}
        return Completion(model, "fake", 200, data, 0.2, 0.05, 10, 5, None, {})


def run_chain(script: dict[str, UpstreamError | None], threshold: int = 3) -> tuple[Any, FakeUpstream]:
    router = make_router()
    b = Breakers(router, threshold, 10.0, clock=Clock())
    upstream = FakeUpstream(script)
    executor = Executor(router, upstream, b, attempt_timeout_s=5.0, max_attempts=3)  # type: ignore[arg-type]
    decision = router.decide(RouteRequest(prompt="hello", model="p/a"))
    assert decision.chain[0] == "p/a"
    result = asyncio.run(executor.complete(decision, {"messages": []}, 5.0))
    return result, upstream


def test_executor_falls_back_on_5xx_and_timeouts() -> None:
    result, upstream = run_chain(
        {"p/a": UpstreamStatusError("p/a", 503, b"busy"), "p/b": UpstreamTimeout("p/b", "slow")}
    )
    assert upstream.calls == ["p/a", "p/b", "p/c"]
    assert result.model == "p/c"
    assert [a.outcome for a in result.attempts] == ["status_error", "timeout", "ok"]


@pytest.mark.parametrize("status", [400, 413, 422])
def test_executor_returns_client_faults_as_they_are(status: int) -> None:
    result, upstream = run_chain({"p/a": UpstreamStatusError("p/a", status, b"bad")})
    assert upstream.calls == ["p/a"], f"a {status} is the client's fault: no other model is tried"
    assert result.client_fault is not None and result.client_fault.status_code == status


@pytest.mark.parametrize("status", [401, 404, 408, 429, 500, 502])
def test_executor_retries_other_statuses(status: int) -> None:
    result, upstream = run_chain({"p/a": UpstreamStatusError("p/a", status, b"no")})
    assert upstream.calls == ["p/a", "p/b"]
    assert result.model == "p/b"
