"""Evaluators after the answer: built-ins, plug-ins, the judge, shadows, preference export.

The HTTP tests run the real router in front of the real simulated upstream (whose judge model,
``simulator/judge``, grades answers by their true quality), both on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from adaptive_router import ConfigError, load_settings
from adaptive_router._cli import main
from adaptive_router.core import Catalogue, Model, Outcome, Router, RouteRequest
from adaptive_router.evaluation import (
    DailySpend,
    EmptyAnswer,
    InvalidJson,
    Refusal,
    Sample,
    Truncated,
    judge_messages,
    load_plugin,
    parse_score,
)
from adaptive_router.offline import decision_record
from adaptive_router.offline._replay import RewardSpec, logged_value, read_log
from adaptive_router.pipeline import SIMULATOR_URL_ENV, build_service
from adaptive_router.simulator import (
    JUDGE_MODEL,
    Scenario,
    SimClock,
    SimModel,
    create_simulator_app,
    sim_models_from_catalogue,
)
from tests.servers import running_server
from tests.service_fixtures import (
    FAST,
    MID,
    SLOW,
    fail,
    scenario,
    service_stack,
    slow,
    small_catalogue,
    user_body,
)

JUDGE_ALWAYS = {"judge": {"model": JUDGE_MODEL, "sample_rate": 1.0}}
DEADLINE_S = 20.0


def _sample(text: str = "fine", **kw: Any) -> Sample:
    return Sample(request_id="r", model="m", messages=[{"role": "user", "content": "q"}], text=text, **kw)


def _wait(check: Callable[[], bool], what: str) -> None:
    """Poll until ``check()`` holds (bounded: a slow machine waits longer, never fails early)."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.02)
    pytest.fail(f"gave up waiting for {what}")


def _evaluation(http: httpx.Client) -> dict[str, dict[str, int]]:
    data: dict[str, dict[str, int]] = http.get("/metrics.json").json().get("evaluation", {})
    return data


def _count(http: httpx.Client, evaluator: str, outcome: str) -> int:
    return _evaluation(http).get(evaluator, {}).get(outcome, 0)


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


# --- built-in evaluators and the judge's parts ------------------------------------------------


@pytest.mark.parametrize(
    ("evaluator", "sample", "score"),
    [
        (EmptyAnswer(), _sample("  \n"), 0.0),
        (EmptyAnswer(), _sample("", tool_calls=True), None),
        (EmptyAnswer(), _sample("hi"), None),
        (Truncated(), _sample(finish_reason="length"), 0.0),
        (Truncated(), _sample(finish_reason="length", capped=True), None),  # the client's own cap
        (Truncated(), _sample(finish_reason="stop"), None),
        (InvalidJson(), _sample('{"a": 1', wants_json=True), 0.0),
        (InvalidJson(), _sample('```json\n{"a": 1}\n```', wants_json=True), 1.0),
        (InvalidJson(), _sample("not json"), None),
        (Refusal([r"^\s*i'm sorry,? but i (can't|cannot)"]), _sample("I'm sorry, but I can't help."), 0.0),
        (Refusal([r"^\s*i'm sorry,? but i (can't|cannot)"]), _sample("Sure: here it is."), None),
    ],
)
def test_builtin_evaluators_catch_their_failure(evaluator: Any, sample: Sample, score: float | None) -> None:
    assert evaluator.evaluate(sample) == score


@pytest.mark.parametrize(
    ("reply", "score"),
    [('{"score": 8}', 0.8), ("Score: 7.5", 0.75), ("9", 0.9), ('```\n{"score": 3}\n```', 0.3)],
)
def test_judge_replies_parse_onto_zero_one(reply: str, score: float) -> None:
    assert parse_score(reply, 10) == pytest.approx(score)


@pytest.mark.parametrize("reply", ["great answer", '{"score": 11}', '{"score": -1}', "true", ""])
def test_an_unusable_judge_reply_is_no_score(reply: str) -> None:
    assert parse_score(reply, 10) is None


def test_a_plugin_loads_by_dotted_path_and_a_bad_path_is_a_config_error() -> None:
    for path in ("tests.test_evaluation:Shouty", "tests.test_evaluation.Shouty"):
        assert load_plugin(path).evaluate(_sample("HEY")) == 0.0
    with pytest.raises(ConfigError, match=r"tests\.test_evaluation:Missing"):
        load_plugin("tests.test_evaluation:Missing")
    with pytest.raises(ConfigError, match="evaluation"):
        load_settings(evaluation={"plugins": ["not a path"]})
    with pytest.raises(ConfigError, match=r"judge\.model"):
        load_settings(evaluation={"shadow": {"enabled": True}})


class Shouty:
    name = "shouty"

    def evaluate(self, sample: Sample) -> float | None:
        return 0.0 if sample.text.isupper() else None


class Boom:
    name = "boom"

    async def evaluate(self, sample: Sample) -> float | None:
        raise RuntimeError("a plug-in with a bug")


class Stuck:
    name = "stuck"

    async def evaluate(self, sample: Sample) -> float | None:
        await asyncio.Event().wait()  # never returns
        return None


class Half:
    name = "half"

    def evaluate(self, sample: Sample) -> float | None:
        return 0.5


# --- the simulated judge follows the true quality ---------------------------------------------


def test_the_simulated_judge_follows_true_quality() -> None:
    qualities = [0.2, 0.4, 0.6, 0.8, 0.95]
    models = [SimModel(f"q/{q}", ttft_s=0.0, tpot_s=0.0, error_rate=0.0, quality=q) for q in qualities]
    app = create_simulator_app(models, Scenario(seed=3, time_scale=0.0, judge_noise=0.1, error_rate=0.0))
    truth, judged = [], []
    with running_server(app) as url, httpx.Client(base_url=url, timeout=10) as http:
        for i in range(12):
            messages = [{"role": "user", "content": f"Question {i}: why is the sky blue?"}]
            for model, quality in zip(models, qualities, strict=True):
                answer = http.post("/v1/chat/completions", json={"model": model.id, "messages": messages})
                text = answer.json()["choices"][0]["message"]["content"]
                grading = judge_messages("Grade it.", messages, text, 10_000)
                reply = http.post("/v1/chat/completions", json={"model": JUDGE_MODEL, "messages": grading})
                assert reply.json()["usage"]["cost"] > 0  # priced, so a spend cap can bite
                score = parse_score(reply.json()["choices"][0]["message"]["content"], 10)
                assert score is not None
                truth.append(quality)
                judged.append(score)
        listed = [m["id"] for m in http.get("/v1/models").json()["data"]]
    assert JUDGE_MODEL not in listed
    assert np.corrcoef(truth, judged)[0, 1] > 0.85
    means = [np.mean(judged[i :: len(qualities)]) for i in range(len(qualities))]
    assert means == sorted(means)  # the judge ranks the models as their true quality does
    assert max(abs(m - q) for m, q in zip(means, qualities, strict=True)) < 0.1


# --- through the pipeline: scores reach the learner ----------------------------------------------


@pytest.fixture
def simulator_url() -> Iterator[str]:
    catalogue = small_catalogue()
    app = create_simulator_app(sim_models_from_catalogue(catalogue), scenario())
    with running_server(app) as url:
        yield url + "/v1"


def _service(url: str, monkeypatch: pytest.MonkeyPatch, **settings: Any) -> Any:
    monkeypatch.setenv(SIMULATOR_URL_ENV, url)
    base = {"exploration": {"policy": "greedy", "seed": 0}}
    return build_service(load_settings(**base, **settings), catalogue=small_catalogue())


async def _until_idle(service: Any) -> None:
    evaluations = service.evaluations
    deadline = time.monotonic() + DEADLINE_S
    while not evaluations.idle and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert evaluations.idle


def _quality(service: Any, model: str, cell: int) -> tuple[float, float]:
    """The evidence weight and the mean of the quality scores the learner holds for ``model``."""
    router = service.router
    sums, row = router.learner.quality, router.catalogue.index[model]
    weight = float(sums.w[cell, row])
    return weight * sums.factor(router.clock()), float(sums.s1[cell, row]) / weight if weight else math.nan


def test_builtin_scores_reach_the_learner_as_weighted_feedback(
    simulator_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = _service(simulator_url, monkeypatch, evaluation={"weights": {"json": 0.5}})
    route = RouteRequest(messages=[{"role": "user", "content": "Reply in JSON."}])
    body = {"messages": route.messages, "response_format": {"type": "json_object"}}

    async def run() -> int:
        async with service.open() as running:
            pipeline = running.pipeline
            for _ in range(4):  # the simulator's answers are words, not JSON
                call = pipeline.call(route, body=body)
                await pipeline.complete(call)
            await _until_idle(service)
            return call.decision.profile.cell

    cell = asyncio.run(run())
    weight, mean = _quality(service, FAST, cell)
    assert weight == pytest.approx(4 * 0.5, rel=1e-6)  # four invalid answers, weight 0.5 each
    assert mean == 0.0
    assert service.evaluation_stats.get("json", "scored") == 4


def test_shadow_adds_judged_evidence_to_the_unchosen_model(
    simulator_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    evaluation = {**JUDGE_ALWAYS, "builtin": [], "shadow": {"enabled": True, "sample_rate": 1.0}}
    service = _service(simulator_url, monkeypatch, evaluation=evaluation)
    route = RouteRequest(messages=[{"role": "user", "content": "Explain tides."}])

    async def run() -> int:
        async with service.open() as running:
            pipeline = running.pipeline
            for _ in range(3):
                call = pipeline.call(route, body={"messages": route.messages})
                await pipeline.complete(call)
                assert call.completion.model_id == FAST
            await _until_idle(service)
            return call.decision.profile.cell

    cell = asyncio.run(run())
    weight, mean = _quality(service, MID, cell)
    assert weight == pytest.approx(3.0, rel=1e-6)  # one judge score per shadowed request
    assert 0.4 < mean < 0.95  # MID's true quality is 0.7
    assert service.evaluation_stats.get("shadow", "ok") == 3


class _LastPlace:
    """A policy that always explores: the worst eligible score (what a large bonus can pick)."""

    name = "last-place"

    def choose(self, score: Any, est: Any, task: int, weights: Any, rng: Any) -> Any:
        from adaptive_router.core._scoring import Choice

        return Choice(int(np.where(np.isfinite(score), score, np.inf).argmin()), 0.5, None)


@pytest.mark.parametrize(
    ("shadow_usd", "judge_usd"),
    [(1.0, 1.0), (0.0, 1.0), (1.0, 0.0)],
    ids=["within-budget", "shadow-budget-spent", "judge-budget-spent"],
)
def test_explore_by_shadow_answers_with_the_best_and_judges_the_pick_beside_it(
    simulator_url: str, monkeypatch: pytest.MonkeyPatch, shadow_usd: float, judge_usd: float
) -> None:
    judge = {**JUDGE_ALWAYS["judge"], "daily_usd": judge_usd}
    evaluation = {"judge": judge, "builtin": [], "shadow": {"explore": True, "daily_usd": shadow_usd}}
    budget = min(shadow_usd, judge_usd)
    service = _service(simulator_url, monkeypatch, evaluation=evaluation)
    service.router.policy = _LastPlace()
    route = RouteRequest(messages=[{"role": "user", "content": "Explain tides."}], mode="quality")

    async def run() -> tuple[list[str], int]:
        async with service.open() as running:
            # POST /route's decision is not answered here, so nothing would send its shadow.
            routed = running.pipeline.route(running.pipeline.call(route))
            assert routed.model == SLOW and routed.shadow is None
            answered = []
            for _ in range(3):
                call = running.pipeline.call(route, body={"messages": route.messages})
                await running.pipeline.complete(call)
                answered.append(call.completion.model_id)
            await _until_idle(service)
            return answered, call.decision.profile.cell

    answered, cell = asyncio.run(run())
    if budget:  # the client never gets the exploratory pick; the pick is judged beside the answer
        assert answered == [FAST] * 3
        weight, mean = _quality(service, SLOW, cell)
        assert weight == pytest.approx(3.0, rel=1e-6)
        assert 0.2 < mean < 0.8  # SLOW's true quality is 0.5
        assert service.evaluation_stats.get("shadow", "ok") == 3
        assert service.evaluation_stats.get("shadow", "explore") == 3
    else:  # no budget for shadows or for judging them: the pick answers, as without shadow.explore
        assert answered == [SLOW] * 3
        assert service.evaluation_stats.get("shadow", "ok") == 0


def test_a_reload_keeps_what_today_spent_on_the_judge_and_on_shadows(
    simulator_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    evaluation = {**JUDGE_ALWAYS, "builtin": [], "shadow": {"enabled": True, "sample_rate": 1.0}}
    service = _service(simulator_url, monkeypatch, evaluation=evaluation)
    route = RouteRequest(messages=[{"role": "user", "content": "Explain tides."}])

    async def answer(pipeline: Any) -> None:
        await pipeline.complete(pipeline.call(route, body={"messages": route.messages}))
        await _until_idle(service)

    async def run() -> None:
        async with service.open() as running:
            await answer(running.pipeline)
            ev = service.evaluations
            judged, shadowed = ev.judge.spend.spent_usd, ev.shadow_spend.spent_usd
            spends, typical = (ev.judge.spend, ev.shadow_spend), ev.judge.spend.typical_usd
            assert judged > 0 and shadowed > 0  # the answer and its shadow judged, the shadow paid
            # A reload that lowers the judge's cap below what today already spent: it stops judging.
            lower = {**evaluation, "judge": {**JUDGE_ALWAYS["judge"], "daily_usd": judged / 2}}
            ev.reconfigure(load_settings(evaluation=lower).evaluation, service.router)
            assert (ev.judge.spend.spent_usd, ev.shadow_spend.spent_usd) == (judged, shadowed)
            # The same accounts, so calls still in flight settle into today's spend; the judge
            # model did not change, so what a judging costs is still known.
            assert ev.judge.spend is spends[0] and ev.shadow_spend is spends[1]
            assert ev.judge.spend.typical_usd == typical
            await answer(running.pipeline)
            assert service.evaluation_stats.get("judge", "budget") == 2  # the answer and its shadow
            assert ev.judge.spend.spent_usd == judged
            # Another judge chain: today's spend stays, what a judging costs is learned again.
            other = {**lower, "judge": {**lower["judge"], "fallbacks": [MID]}}
            ev.reconfigure(load_settings(evaluation=other).evaluation, service.router)
            assert ev.judge.spend.spent_usd == judged and ev.judge.spend.typical_usd is None

    asyncio.run(run())


def test_judgings_in_flight_hold_their_cost_so_the_cap_is_not_overshot(
    simulator_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    judge = {**JUDGE_ALWAYS["judge"]}
    evaluation = {"judge": judge, "builtin": [], "workers": 8}
    service = _service(simulator_url, monkeypatch, evaluation=evaluation)
    route = RouteRequest(messages=[{"role": "user", "content": "Explain tides."}])

    async def run() -> tuple[float, float, float]:
        async with service.open() as running:
            pipeline, spend = running.pipeline, service.evaluations.judge.spend
            await pipeline.complete(pipeline.call(route, body={"messages": route.messages}))
            await _until_idle(service)
            one = spend.spent_usd  # what one judging costs (the same prompt, the same answer length)
            spend.cap_usd = 3.5 * one  # room for two and a half more
            calls = [pipeline.call(route, body={"messages": route.messages}) for _ in range(8)]
            await asyncio.gather(*(pipeline.complete(call) for call in calls))  # eight at once
            await _until_idle(service)
            return one, spend.spent_usd, spend.cap_usd

    one, spent, cap = asyncio.run(run())
    # Without holding, all eight workers pass the check before any pays: 9 judgings' worth.
    assert spent <= cap + 1.05 * one
    assert service.evaluation_stats.get("judge", "budget") >= 4


def test_explore_by_shadow_needs_a_judge() -> None:
    with pytest.raises(ConfigError, match=r"shadow\.explore needs judge\.model"):
        load_settings(evaluation={"shadow": {"explore": True}})


# --- the daily spend of judges and shadows -----------------------------------------------------


def test_calls_in_flight_hold_what_a_call_typically_costs() -> None:
    spend = DailySpend(1.0, SimClock(10.0))
    first = spend.reserve()
    assert first == 0.0  # nothing known yet: nothing to hold
    spend.settle(first, 0.3)
    holds = [spend.reserve() for _ in range(3)]  # 0.3 spent, 0.3 held by each call in flight
    assert holds == [0.3, 0.3, 0.3] and spend.reserve() is None and not spend.allows()
    for held in holds:
        spend.settle(held, 0.3)
    assert spend.spent_usd == pytest.approx(1.2) and spend.reserved_usd == 0.0 and spend.in_flight == 0
    assert spend.spent_usd - spend.cap_usd <= 0.3  # over by at most one call's surprise


def test_a_failed_or_cancelled_call_releases_its_hold_and_spends_nothing() -> None:
    spend = DailySpend(1.0, SimClock(10.0))
    spend.settle(spend.reserve() or 0.0, 0.4)
    held = spend.reserve()
    assert held == 0.4 and spend.reserved_usd == 0.4
    spend.settle(held, None)  # timed out, failed, or cancelled: no cost known
    assert (spend.spent_usd, spend.reserved_usd, spend.in_flight) == (0.4, 0.0, 0)


def test_the_day_rolls_over_under_calls_in_flight() -> None:
    clock = SimClock(86_400.0 - 1.0)
    spend = DailySpend(1.0, clock)
    spend.settle(spend.reserve() or 0.0, 0.9)
    held = spend.reserve()
    assert held == 0.9 and not spend.allows()
    clock.advance(2.0)  # midnight (UTC) passes while the call runs
    assert spend.allows()  # yesterday's spend is gone; today's holds stay
    spend.settle(held, 0.9)
    assert spend.spent_usd == 0.9 and spend.reserved_usd == 0.0


def test_a_lower_cap_stops_calls_and_a_new_model_is_priced_afresh() -> None:
    spend = DailySpend(1.0, SimClock(10.0))
    for _ in range(3):
        spend.settle(spend.reserve() or 0.0, 0.01)
    spend.cap_usd = 0.02  # a reload lowers the cap below what the day spent
    assert spend.reserve() is None
    spend.cap_usd = 10.0
    spend.reprice()  # a reload changed the model: the old price says nothing
    assert spend.reserve() == 0.0
    spend.settle(0.0, 1.0)
    assert spend.reserve() == 1.0  # the new model's price, not the old models' mean
    spend.settle(1.0, 0.5)
    assert spend.typical_usd == pytest.approx(1.0 + 0.25 * (0.5 - 1.0))  # the last few calls count


# --- through a real server: never delaying, never failing ---------------------------------------


def _chat_ok(stack: Any, n: int, **extra: Any) -> None:
    for i in range(n):
        response = stack.chat(user_body(f"Say hello {i}.", **extra))
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["message"]["content"]


@pytest.mark.parametrize(
    ("judge", "events", "outcome"),
    [
        ({"timeout_s": 0.05}, [slow(JUDGE_MODEL, 100.0)], "timeout"),
        ({}, [fail(JUDGE_MODEL)], "error"),
        ({"daily_usd": 1e-12}, [], "budget"),
    ],
    ids=["timeout", "error", "over-budget"],
)
def test_a_judge_that_fails_is_skipped_and_counted_and_answers_still_go_out(
    monkeypatch: pytest.MonkeyPatch, judge: dict[str, Any], events: list[Any], outcome: str
) -> None:
    evaluation = {"judge": {**JUDGE_ALWAYS["judge"], **judge}, "plugins": ["tests.test_evaluation:Boom"]}
    with service_stack(monkeypatch, events=events, evaluation=evaluation) as stack:
        _chat_ok(stack, 4)
        # Over budget: what started before the first judging spent past the cap still ran.
        judged = ("ok", outcome) if outcome == "budget" else (outcome,)
        _wait(lambda: sum(_count(stack.http, "judge", o) for o in judged) == 4, "every judging counted")
        assert _count(stack.http, "judge", outcome) >= 1
        spent = stack.http.get("/metrics.json").json()["models"][JUDGE_MODEL]["spend_usd"]
        assert spent > 0 if outcome == "budget" else spent == 0  # the judge's calls are in the spend
        _wait(lambda: _count(stack.http, "boom", "error") >= 4, "plug-in errors counted")
        _chat_ok(stack, 1)  # still serving after every evaluation went wrong


def test_answers_do_not_wait_for_the_judge(monkeypatch: pytest.MonkeyPatch) -> None:
    # The judge takes ~30 s of real time (and may: timeout 60 s); answers come back before it.
    evaluation = {"judge": {**JUDGE_ALWAYS["judge"], "timeout_s": 60.0}}
    with service_stack(monkeypatch, events=[slow(JUDGE_MODEL, 10_000.0)], evaluation=evaluation) as stack:
        _chat_ok(stack, 3)
        with stack.http.stream(
            "POST", "/v1/chat/completions", json=user_body("Count to three.", stream=True)
        ) as response:
            assert response.status_code == 200
            assert b"[DONE]" in response.read()
        _wait(lambda: stack.sim_stats()["requests"].get(JUDGE_MODEL, 0) >= 4, "the judge asked")
        assert _evaluation(stack.http).get("judge", {}) == {}  # still grading: no answer waited


def test_a_streamed_answer_is_evaluated_from_its_summary(monkeypatch: pytest.MonkeyPatch) -> None:
    plugins = ["tests.test_evaluation:Stuck", "tests.test_evaluation:Half"]
    with service_stack(monkeypatch, evaluation={"plugins": plugins, "timeout_s": 0.05}) as stack:
        body = user_body("Count to three.", stream=True)
        with stack.http.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            response.read()
        _wait(lambda: _count(stack.http, "half", "scored") == 1, "the stream evaluated")
        assert _count(stack.http, "stuck", "timeout") == 1  # a plug-in that hangs is cut off
        # Not empty: the text was gathered from the stream's deltas.
        assert _count(stack.http, "empty", "silent") == 1 and _count(stack.http, "empty", "scored") == 0


# --- shadows over HTTP, the traffic log and preference export ------------------------------------


def _shadowed_log(monkeypatch: pytest.MonkeyPatch, path: Path, *, text: bool, n: int = 4) -> None:
    evaluation = {**JUDGE_ALWAYS, "shadow": {"enabled": True, "sample_rate": 1.0}}
    server = {"traffic_log": str(path), "log_prompts": text, "log_answers": text}
    with service_stack(monkeypatch, evaluation=evaluation, server=server) as stack:
        _chat_ok(stack, n)
        _wait(lambda: _count(stack.http, "shadow", "ok") >= n, "shadows judged")
        assert stack.sim_stats()["requests"][MID] == n  # the unchosen model answered each one too


def test_shadow_comparisons_log_preferences_and_export_writes_triples(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log, out = tmp_path / "traffic.jsonl", tmp_path / "pairs.jsonl"
    _shadowed_log(monkeypatch, log, text=True)
    records = _lines(log)
    preferences = [r for r in records if r["type"] == "preference"]
    judged = [r for r in records if r["type"] == "evaluation" and r["evaluator"] == "judge"]
    assert {r["model"] for r in judged} == {FAST, MID}
    decisions = [r for r in records if r["type"] == "decision"]
    assert decisions and all(r["answer"] and r["prompt"] for r in decisions)  # log_answers, log_prompts
    assert preferences and all({r["chosen_model"], r["rejected_model"]} == {FAST, MID} for r in preferences)
    assert main(["export-preferences", str(log), "--out", str(out)]) == 0
    pairs = _lines(out)
    assert len(pairs) == len(preferences)
    for pair in pairs:
        assert set(pair) == {"prompt", "chosen", "rejected", "chosen_model", "rejected_model", "scores"}
        assert pair["prompt"][0]["content"].startswith("Say hello")
        assert pair["chosen"] and pair["rejected"] and pair["chosen"] != pair["rejected"]
        assert pair["scores"]["chosen"] > pair["scores"]["rejected"]
    assert f"wrote {len(pairs)} preference pairs" in capsys.readouterr().err


def test_export_refuses_a_log_with_hashed_prompts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log, out = tmp_path / "traffic.jsonl", tmp_path / "pairs.jsonl"
    _shadowed_log(monkeypatch, log, text=False, n=2)
    assert all("prompt" not in r for r in _lines(log))
    assert main(["export-preferences", str(log), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "prompt hashes only" in err and "server.log_prompts: true" in err and "Traceback" not in err
    assert not out.exists()
    assert main(["export-preferences", str(tmp_path / "none.jsonl"), "--out", str(out)]) == 2
    assert "no such traffic log" in capsys.readouterr().err


def _decision(rid: str, model: str, prompt: str, answer: str | None) -> dict[str, Any]:
    line: dict[str, Any] = {
        "v": 1,
        "type": "decision",
        "request_id": rid,
        "answered_by": model,
        "prompt_sha256": prompt,
        "prompt": [{"role": "user", "content": prompt}],
        "candidates": [],
    }
    if answer is not None:
        line["answer"] = answer
    return line


def test_export_pairs_fed_back_answers_to_the_same_prompt(tmp_path: Path) -> None:
    log, out = tmp_path / "traffic.jsonl", tmp_path / "pairs.jsonl"
    lines = [
        _decision("a", FAST, "p1", "good"),
        _decision("b", MID, "p1", "bad"),
        _decision("c", MID, "p2", "alone"),
        {"v": 1, "type": "feedback", "request_id": "a", "score": 0.9},
        {"v": 1, "type": "evaluation", "request_id": "b", "model": MID, "evaluator": "judge", "score": 0.3},
        {"v": 1, "type": "feedback", "request_id": "c", "score": 0.1},
    ]
    log.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert main(["export-preferences", str(log), "--out", str(out)]) == 0
    assert _lines(out) == [
        {
            "prompt": [{"role": "user", "content": "p1"}],
            "chosen": "good",
            "rejected": "bad",
            "chosen_model": FAST,
            "rejected_model": MID,
            "scores": {"chosen": 0.9, "rejected": 0.3},
        }
    ]
    log.write_text("".join(json.dumps(_decision(r, FAST, "p", None)) + "\n" for r in "xy"))
    assert main(["export-preferences", str(log), "--out", str(out)]) == 2  # prompts, no answers


def test_replay_reads_evaluator_lines_and_rewards_with_the_judge(tmp_path: Path) -> None:
    settings = load_settings(exploration={"policy": "softmax", "seed": 0})
    router = Router.from_settings(settings, small_catalogue())
    decision = router.decide(RouteRequest(prompt="Explain tides."))
    record = decision_record(decision, [Outcome(model=decision.model, success=True, latency_s=0.5)])
    judged = {"v": 1, "type": "evaluation", "request_id": decision.request_id, "evaluator": "judge"}
    log = tmp_path / "traffic.jsonl"
    log.write_text(
        json.dumps(record) + "\n" + json.dumps({**judged, "model": decision.model, "score": 0.25}) + "\n"
    )
    data = read_log(log)  # strict: evaluator lines are traffic-log lines
    assert data.judged == {decision.request_id: 0.25}
    assert logged_value(data).value == pytest.approx(0.25)  # the judge's score is the reward
    assert "judge's score" in RewardSpec().describe()


def test_no_evaluation_when_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    catalogue = Catalogue([Model(FAST, 1e-8, 2e-8, 8192, quality=0.9)], source="test")
    with service_stack(monkeypatch, catalogue=catalogue, evaluation={"enabled": False}) as stack:
        _chat_ok(stack, 1, max_tokens=1)
        assert "evaluation" not in stack.http.get("/metrics.json").json()
