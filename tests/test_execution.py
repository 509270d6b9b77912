"""The fallback chain and the circuit breakers, driven with a fake upstream and a fake clock."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from adaptive_router import (
    Catalogue,
    Model,
    Router,
    RouteRequest,
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeout,
    load_settings,
)
from adaptive_router.simulator import SimClock
from adaptive_router.upstream import Breakers, Completion, Executor

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


# --- streams: falling back before the first event, and recording how the stream ended -------------


class FakeStream:
    def __init__(self, model: str, error: UpstreamError | None) -> None:
        self.model_id = model
        self.error = error
        self.closed = False

    async def start(self) -> None:
        if self.error is not None:
            raise self.error

    async def aclose(self) -> None:
        self.closed = True

    def result(self) -> Completion:
        return Completion(self.model_id, "fake", 200, {}, 0.8, 0.1, 10, 40, None, {})


class StreamingUpstream:
    def __init__(self, script: dict[str, UpstreamError | None]) -> None:
        self.script = script
        self.opened: list[FakeStream] = []

    def stream(self, model: str, body: dict[str, Any], timeout_s: float) -> FakeStream:
        handle = FakeStream(model, self.script.get(model))
        self.opened.append(handle)
        return handle


def open_stream(
    script: dict[str, UpstreamError | None], threshold: int = 3
) -> tuple[Any, StreamingUpstream, Executor, Any, Breakers]:
    router = make_router()
    b = Breakers(router, threshold, 10.0, clock=Clock())
    upstream = StreamingUpstream(script)
    executor = Executor(router, upstream, b, attempt_timeout_s=5.0, max_attempts=3)  # type: ignore[arg-type]
    decision = router.decide(RouteRequest(prompt="hello", model="p/a"))
    result = asyncio.run(executor.open_stream(decision, {"messages": []}, 5.0))
    return result, upstream, executor, decision, b


def evidence(router: Router, model: str) -> float:
    return float(router.learner.success.w[:, router.catalogue.index[model]].sum())


def test_stream_falls_back_before_its_first_event_and_closes_the_failed_one() -> None:
    result, upstream, *_ = open_stream({"p/a": UpstreamStatusError("p/a", 503, b"busy")})
    assert result.model == "p/b"
    assert [h.model_id for h in upstream.opened] == ["p/a", "p/b"]
    assert upstream.opened[0].closed and not upstream.opened[1].closed
    assert [a.outcome for a in result.attempts] == ["status_error"]


def test_stream_client_fault_is_not_retried() -> None:
    result, upstream, *_ = open_stream({"p/a": UpstreamStatusError("p/a", 422, b"bad")})
    assert result.stream is None and result.client_fault is not None
    assert [h.model_id for h in upstream.opened] == ["p/a"]


def test_finished_stream_is_learned_and_closes_a_half_open_breaker() -> None:
    result, _, executor, decision, b = open_stream({})
    before = evidence(executor.router, "p/a")
    executor.finish_stream(decision, result.stream, None, False, result)
    assert [(a.model, a.outcome) for a in result.attempts] == [("p/a", "ok")]
    assert result.attempts[0].latency_ms == pytest.approx(800.0)
    assert evidence(executor.router, "p/a") > before
    assert b.state("p/a") == "closed"


def test_stream_cut_short_counts_against_the_model() -> None:
    result, _, executor, decision, b = open_stream({}, threshold=1)
    executor.finish_stream(decision, result.stream, UpstreamTimeout("p/a", "stalled"), False, result)
    assert [(a.model, a.outcome) for a in result.attempts] == [("p/a", "timeout")]
    assert b.state("p/a") == "open"


def test_stream_the_client_left_frees_the_probe_and_teaches_nothing() -> None:
    result, _, executor, decision, b = open_stream({}, threshold=1)
    b.failure("p/a")  # open, then half-open after the cool-down: this stream is the probe
    b.clock.now = 10.0  # type: ignore[attr-defined]
    b.refresh()
    assert b.allow("p/a")
    before = evidence(executor.router, "p/a")
    executor.finish_stream(decision, result.stream, None, True, result)
    assert [(a.model, a.outcome) for a in result.attempts] == [("p/a", "cancelled")]
    assert result.attempts[0].latency_ms == pytest.approx(800.0)
    assert evidence(executor.router, "p/a") == before
    assert b.state("p/a") == "half_open" and b.allow("p/a")


# --- what the chain reports: skipped models, the attempt cap, timeouts, observers ------------------


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, ...]] = []

    def attempt(self, model: str, outcome: str, latency_s: float) -> None:
        self.events.append(("attempt", model, outcome))

    def fallback(self, from_model: str, to_model: str) -> None:
        self.events.append(("fallback", from_model, to_model))

    def breaker(self, model: str, state: str) -> None:
        self.events.append(("breaker", model, state))


def test_chain_skips_open_breakers_and_respects_max_attempts() -> None:
    router = make_router()
    recorder = Recorder()
    b = Breakers(router, 1, 10.0, clock=Clock(), observer=recorder)
    upstream = FakeUpstream({m: UpstreamStatusError(m, 500, b"") for m in IDS})
    executor = Executor(
        router,
        upstream,
        b,
        attempt_timeout_s=5.0,
        max_attempts=2,
        observer=recorder,  # type: ignore[arg-type]
    )
    decision = router.decide(RouteRequest(prompt="hello", model="p/a"))
    b.failure("p/a")  # p/a's breaker is open: skipped, listed, and not counted as an attempt
    result = asyncio.run(executor.complete(decision, {}, 5.0))
    assert [(a.model, a.outcome) for a in result.attempts] == [
        ("p/a", "breaker_open"),
        ("p/b", "status_error"),
        ("p/c", "status_error"),
    ]
    assert result.model is None and not result.all_timed_out
    assert upstream.calls == ["p/b", "p/c"]
    assert ("breaker", "p/a", "open") in recorder.events
    assert ("attempt", "p/b", "status_error") in recorder.events
    assert ("fallback", "p/b", "p/c") in recorder.events
    assert b.snapshot() == {"p/a": "open", "p/b": "open", "p/c": "open"}


def test_all_timed_out_only_when_every_attempt_timed_out() -> None:
    result, _ = run_chain({m: UpstreamTimeout(m, "slow") for m in IDS})
    assert result.all_timed_out and result.model is None
    result, _ = run_chain(
        {"p/a": UpstreamTimeout("p/a", "slow"), "p/b": UpstreamStatusError("p/b", 500, b"")}
    )
    assert not result.all_timed_out


def test_attempt_timeout_is_the_tighter_of_setting_and_request() -> None:
    router = make_router()
    executor = Executor(
        router, FakeUpstream({}), Breakers(router, 3, 1.0), attempt_timeout_s=30.0, max_attempts=3
    )  # type: ignore[arg-type]
    assert executor.timeout_for(None) == 30.0
    assert executor.timeout_for(2500.0) == 2.5
    assert executor.timeout_for(60_000.0) == 30.0


def test_attempt_as_dict() -> None:
    result, _ = run_chain({"p/a": UpstreamStatusError("p/a", 503, b"busy")})
    first = result.attempts[0].as_dict()
    assert first == {
        "model": "p/a",
        "outcome": "status_error",
        "latency_ms": first["latency_ms"],
        "status": 503,
        "error": first["error"],
    }
    assert "HTTP 503" in first["error"]
    assert result.attempts[1].as_dict()["status"] is None and result.attempts[1].as_dict()["error"] is None


def test_breaker_state_of_an_unknown_model_is_closed() -> None:
    b, _, _ = breakers()
    assert b.state("never/seen") == "closed" and b.allow("never/seen")
    b.success("never/seen")
    b.release("never/seen")
    assert b.snapshot() == {}


def test_client_fault_is_listed_and_frees_a_probe() -> None:
    router = make_router()
    b = Breakers(router, 1, 1.0, clock=Clock())
    b.failure("p/a")
    b.clock.now = 1.0  # type: ignore[attr-defined]
    b.refresh()  # half-open: the next request is the probe
    upstream = FakeUpstream({"p/a": UpstreamStatusError("p/a", 400, b"bad")})
    ticks = iter([10.0, 10.25])
    executor = Executor(
        router,
        upstream,
        b,
        attempt_timeout_s=5.0,
        max_attempts=3,
        clock=lambda: next(ticks),  # type: ignore[arg-type]
    )
    decision = router.decide(RouteRequest(prompt="hello", model="p/a"))
    result = asyncio.run(executor.complete(decision, {}, 5.0))
    attempt = result.attempts[0]
    assert (attempt.model, attempt.outcome, attempt.status) == ("p/a", "client_error", 400)
    assert attempt.latency_ms == pytest.approx(250.0) and "400" in (attempt.error or "")
    assert b.state("p/a") == "half_open" and b.allow("p/a"), "the client's fault says nothing of the model"


def test_breaker_opens_once_however_many_late_failures_arrive() -> None:
    router = make_router()
    recorder = Recorder()
    b = Breakers(router, 1, 10.0, clock=Clock(), observer=recorder)
    for _ in range(3):  # requests admitted before it opened fail afterwards
        b.failure("p/a")
    assert recorder.events == [("breaker", "p/a", "open")]


def test_stream_skips_an_open_breaker_and_times_its_failures() -> None:
    router = make_router()
    b = Breakers(router, 1, 10.0, clock=Clock())
    upstream = StreamingUpstream({"p/b": UpstreamStatusError("p/b", 502, b"")})
    ticks = iter([5.0, 5.5, 6.0])
    executor = Executor(
        router,
        upstream,
        b,
        attempt_timeout_s=5.0,
        max_attempts=3,
        clock=lambda: next(ticks),  # type: ignore[arg-type]
    )
    decision = router.decide(RouteRequest(prompt="hello", model="p/a"))
    b.failure("p/a")  # opened by another request after this one was decided
    result = asyncio.run(executor.open_stream(decision, {}, 4.0))
    assert [(a.model, a.outcome) for a in result.attempts] == [
        ("p/a", "breaker_open"),
        ("p/b", "status_error"),
    ]
    assert result.attempts[1].latency_ms == pytest.approx(500.0)
    assert result.model == "p/c"


def test_finished_stream_teaches_time_to_first_token_and_per_token_time() -> None:
    result, _, executor, decision, _ = open_stream({})
    row = executor.router.catalogue.index["p/a"]
    learner = executor.router.learner
    points, tokens = learner.sums("lat_n"), learner.sums("tokens")
    weight, x_sum, answers = float(points.w[row]), float(points.s1[row]), float(tokens.w[:, row].sum())
    executor.finish_stream(decision, result.stream, None, False, result)
    # Two points of the latency fit (the first token at x = 0, the whole answer at its length)
    # worth one answer together, and the answer's length.
    assert float(points.w[row]) == pytest.approx(weight + 1.0, rel=1e-6)
    assert float(points.s1[row]) > x_sum
    assert float(tokens.w[:, row].sum()) > answers


class RecordingUpstream(FakeUpstream):
    def __init__(self, script: dict[str, UpstreamError | None]) -> None:
        super().__init__(script)
        self.seen: list[tuple[dict[str, Any], float]] = []

    async def complete(self, model: str, body: dict[str, Any], timeout_s: float) -> Completion:
        self.seen.append((body, timeout_s))
        return await super().complete(model, body, timeout_s)


def test_chain_passes_the_body_and_timeout_and_reports_every_step() -> None:
    router = make_router()
    recorder = Recorder()
    b = Breakers(router, 3, 10.0, clock=Clock(), observer=recorder)
    upstream = RecordingUpstream({"p/a": UpstreamStatusError("p/a", 500, b"")})
    executor = Executor(
        router,
        upstream,
        b,
        attempt_timeout_s=5.0,
        max_attempts=3,
        observer=recorder,  # type: ignore[arg-type]
    )
    decision = router.decide(RouteRequest(prompt="hello", model="p/a"))
    row = router.catalogue.index["p/a"]
    success_before = float(router.learner.estimates(router.clock()).success[..., row].mean())
    body = {"messages": [{"role": "user", "content": "hello"}]}
    result = asyncio.run(executor.complete(decision, body, 2.5))
    assert upstream.seen == [(body, 2.5), (body, 2.5)]
    assert recorder.events == [
        ("attempt", "p/a", "status_error"),
        ("fallback", "p/a", "p/b"),
        ("attempt", "p/b", "ok"),
    ]
    assert result.model == "p/b" and result.completion is not None
    assert float(router.learner.estimates(router.clock()).success[..., row].mean()) < success_before


def test_chain_stops_at_max_attempts() -> None:
    router = make_router()
    upstream = FakeUpstream({m: UpstreamStatusError(m, 500, b"") for m in IDS})
    executor = Executor(router, upstream, Breakers(router, 9, 1.0), attempt_timeout_s=5.0, max_attempts=2)  # type: ignore[arg-type]
    decision = router.decide(RouteRequest(prompt="hello", model="p/a"))
    result = asyncio.run(executor.complete(decision, {}, 5.0))
    assert upstream.calls == ["p/a", "p/b"] and len(result.attempts) == 2


def test_skipped_attempt_takes_no_time_and_attempts_round_to_hundredths() -> None:
    from adaptive_router.upstream import Attempt

    assert Attempt("m", "ok", 123.456789).as_dict()["latency_ms"] == 123.46
    result, _ = run_chain({})
    assert result.attempts[0].outcome == "ok"
    router = make_router()
    b = Breakers(router, 1, 10.0, clock=Clock())
    executor = Executor(router, FakeUpstream({}), b, attempt_timeout_s=5.0, max_attempts=3)  # type: ignore[arg-type]
    decision = router.decide(RouteRequest(prompt="hello", model="p/a"))
    b.failure("p/a")
    skipped = asyncio.run(executor.complete(decision, {}, 5.0)).attempts[0]
    assert (skipped.outcome, skipped.latency_ms) == ("breaker_open", 0.0)


def test_breaker_goes_half_open_once_per_cool_down() -> None:
    router = make_router()
    recorder = Recorder()
    clock = Clock()
    b = Breakers(router, 1, 1.0, clock=clock, observer=recorder)
    b.failure("p/a")
    clock.now = 2.0
    b.refresh()
    b.refresh()
    assert recorder.events == [("breaker", "p/a", "open"), ("breaker", "p/a", "half_open")]
