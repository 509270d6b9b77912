"""The request pipeline outside HTTP: stages, hooks, accounting, and failures as exceptions."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from adaptive_router import AllCandidatesFailed, BudgetExceeded, UpstreamRejected, load_settings
from adaptive_router.core import RouteRequest
from adaptive_router.pipeline import SIMULATOR_URL_ENV, Call, NoHook, build_service
from adaptive_router.simulator import create_simulator_app, sim_models_from_catalogue
from tests.servers import running_server
from tests.service_fixtures import FAST, MID, scenario, small_catalogue

STAGES = ["admitted", "decided", "executed", "accounted", "stored"]


def _answer(model: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1},
    }


def _upstream(statuses: dict[str, int], seen: list[dict[str, Any]]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append(body)
        status = statuses.get(body["model"], 200)
        if status != 200:
            return httpx.Response(status, json={"error": {"message": "no", "code": status}})
        return httpx.Response(200, json=_answer(body["model"]))

    return httpx.MockTransport(handle)


class Recorder(NoHook):
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def _note(self, stage: str, call: Call) -> None:
        self.seen.append((stage, call.outcome))

    def admitted(self, call: Call) -> None:
        self._note("admitted", call)

    def decided(self, call: Call) -> None:
        self._note("decided", call)

    def executed(self, call: Call) -> None:
        self._note("executed", call)

    def accounted(self, call: Call) -> None:
        self._note("accounted", call)

    def stored(self, call: Call) -> None:
        self._note("stored", call)


def _run(
    statuses: dict[str, int],
    body: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    extra: NoHook | None = None,
    **settings: Any,
) -> Any:
    monkeypatch.setenv("ROUTER_SIMULATOR_URL", "http://127.0.0.1:9/v1")  # never dialled: mock transport
    seen: list[dict[str, Any]] = []
    overrides = {
        "exploration": {"policy": "greedy", "seed": 0},
        "upstream": {"simulate": "always"},
        **settings,
    }
    service = build_service(
        load_settings(**overrides), catalogue=small_catalogue(), transport=_upstream(statuses, seen)
    )
    recorder = Recorder()

    async def go() -> tuple[Call, BaseException | None]:
        async with service.open() as running:
            pipeline = running.pipeline
            if extra is not None:
                pipeline.hooks.add(extra)
            pipeline.hooks.add(recorder)
            call = pipeline.call(RouteRequest(messages=body["messages"]), body=body)
            pipeline.consider_cache(call, None, opt_in=False)
            try:
                await pipeline.complete(call)
            except Exception as exc:  # the test looks at which one
                return call, exc
            return call, None

    call, error = asyncio.run(go())
    return call, error, recorder.seen, seen, service.metrics.summary()


def test_pipeline_runs_every_stage_in_order_and_accounts(monkeypatch: pytest.MonkeyPatch) -> None:
    body = {"messages": [{"role": "user", "content": "hello"}], "temperature": 0}
    call, error, stages, upstream, metrics = _run({}, body, monkeypatch)
    assert error is None
    assert [s for s, _ in stages] == STAGES
    assert call.answer["model"] == FAST and json.loads(call.answer_json) == call.answer
    assert upstream == [{**body, "model": FAST, "stream": False}]  # the body as given, model set
    assert metrics["requests"]["total"] == 1


def test_pipeline_falls_back_and_reports_every_attempt(monkeypatch: pytest.MonkeyPatch) -> None:
    body = {"messages": [{"role": "user", "content": "hello"}]}
    call, error, stages, _, _ = _run({FAST: 500}, body, monkeypatch)
    assert error is None and call.answer["model"] == MID
    assert [a.outcome for a in call.result.attempts] == ["status_error", "ok"]
    assert "stored" not in [s for s, _ in stages]  # temperature 1: not cacheable


def test_pipeline_hands_back_a_client_fault_without_trying_others(monkeypatch: pytest.MonkeyPatch) -> None:
    _, error, stages, upstream, _ = _run(
        {FAST: 400}, {"messages": [{"role": "user", "content": "x"}]}, monkeypatch
    )
    assert isinstance(error, UpstreamRejected) and error.status == 400
    assert len(upstream) == 1
    assert stages[-1] == ("accounted", "client_error")


def test_pipeline_raises_when_every_candidate_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    statuses = {m.id: 503 for m in small_catalogue().models}
    _, error, stages, _, _ = _run(statuses, {"messages": [{"role": "user", "content": "x"}]}, monkeypatch)
    assert isinstance(error, AllCandidatesFailed) and not error.timed_out
    assert stages[-1] == ("accounted", "upstream_error")


def test_pipeline_admission_refuses_over_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    budget = {"global_daily_usd": 0.0, "mode": "reject"}
    _, error, stages, upstream, _ = _run(
        {}, {"messages": [{"role": "user", "content": "x"}]}, monkeypatch, budget=budget
    )
    assert isinstance(error, BudgetExceeded)
    assert stages == [] and upstream == []


class Raises(NoHook):
    def __init__(self, stage: str) -> None:
        self.stage = stage

    def admitted(self, call: Call) -> None:
        if self.stage == "admitted":
            raise BudgetExceeded("key", "reserved elsewhere")

    def accounted(self, call: Call) -> None:
        if self.stage == "accounted":
            raise RuntimeError("an evaluator's bug")


def test_a_hook_may_refuse_at_admission(monkeypatch: pytest.MonkeyPatch) -> None:
    body = {"messages": [{"role": "user", "content": "x"}]}
    _, error, stages, upstream, _ = _run({}, body, monkeypatch, Raises("admitted"))
    assert isinstance(error, BudgetExceeded) and stages == [] and upstream == []


def test_a_failing_hook_after_the_answer_loses_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    body = {"messages": [{"role": "user", "content": "x"}]}
    call, error, stages, _, _ = _run({}, body, monkeypatch, Raises("accounted"))
    assert error is None and call.answer["model"] == FAST
    assert ("accounted", "ok") in stages  # the hooks after the failing one still ran


def test_a_stream_closed_right_after_its_done_is_answered_and_paid_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client that goes away as soon as it has ``[DONE]`` got the whole answer: it counts as
    answered (learned, spent, metered), not as cancelled."""
    app = create_simulator_app(sim_models_from_catalogue(small_catalogue()), scenario())
    with running_server(app) as url:
        monkeypatch.setenv(SIMULATOR_URL_ENV, url + "/v1")
        service = build_service(load_settings(exploration={"policy": "greedy"}), catalogue=small_catalogue())
        route = RouteRequest(messages=[{"role": "user", "content": "hello"}])

        async def go() -> Call:
            async with service.open() as running:
                pipeline = running.pipeline
                call = pipeline.call(route, body={"messages": route.messages, "stream": True}, stream=True)
                events = (await pipeline.stream(call)).events()
                async for payload in events:
                    if payload == b"[DONE]":
                        break  # gone: the server closes the stream at the [DONE] it sent
                await events.aclose()  # type: ignore[attr-defined]
                return call

        call = asyncio.run(go())
    assert call.outcome == "ok" and call.cost_usd > 0
    outcomes = service.metrics.summary()["requests"]["by_outcome"]
    assert outcomes["ok"] == 1 and outcomes["cancelled"] == 0
