from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from adaptive_router import ReplayError, Settings, load_settings
from adaptive_router._cli import main
from adaptive_router.core import Catalogue, LinearScale, LogScale, Model, Router, RouteRequest
from adaptive_router.core._scoring import DEFAULT_SCALES, scale_record
from adaptive_router.offline import (
    LogData,
    RewardSpec,
    TargetPolicy,
    TrafficLog,
    cost_quality_curve,
    evaluate,
    evaluate_many,
    load_latency,
    load_outcomes,
    logged_value,
    read_log,
    replay_outcomes,
    target_distribution,
)
from adaptive_router.simulator import SimClock, World

MODELS = ["m/a", "m/b", "m/c"]
MU = np.array([0.3, 0.6, 0.8])  # true mean reward of each model


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the CLI reads ./settings.yaml and ROUTER_*: keep both out
    for name in list(os.environ):
        if name.startswith("ROUTER_"):
            monkeypatch.delenv(name)


# --- a synthetic log with a known answer ---------------------------------------------------------


def synthetic(
    n: int, seed: int, temperature: float = 0.1, weights: tuple[float, ...] = (0.2, 0.3, 0.5)
) -> LogData:
    """Softmax logging over three models whose unweighted terms vary per request; Bernoulli rewards."""
    rng = np.random.default_rng(seed)
    decisions, feedback = [], {}
    for i in range(n):
        terms = rng.uniform(0.0, 1.0, size=(3, 3))  # (model, term)
        score = terms @ np.array(weights)
        p = np.exp((score - score.max()) / temperature)
        p /= p.sum()
        a = int(rng.choice(3, p=p))
        candidates = [
            {
                "model": MODELS[j],
                "score": float(score[j]),
                "latency_term": weights[0] * terms[j, 0],
                "cost_term": weights[1] * terms[j, 1],
                "quality_term": weights[2] * terms[j, 2],
                "exploration": 0.0,
                "latency_s": 1.0,
                "cost_usd": 0.001,
                "quality": float(terms[j, 2]),
            }
            for j in range(3)
        ]
        candidates.insert(0, candidates.pop(a))  # the chosen model heads the chain
        request_id = f"r{i}"
        decisions.append(
            {
                "v": 1,
                "type": "decision",
                "request_id": request_id,
                "profile": {"task": "general"},
                "weights": dict(zip(("latency", "cost", "quality"), weights, strict=True)),
                "candidates": candidates,
                "model": MODELS[a],
                "propensity": float(p[a]),
                "policy": "softmax",
                "answered_by": MODELS[a],
                "cached": False,
                "cost_scale": scale_record(DEFAULT_SCALES[1]),  # the terms are taken as read on it
                "_terms": terms,  # for the test's own truth; readers ignore unknown fields
            }
        )
        feedback[request_id] = float(rng.random() < MU[a])
    return LogData(decisions, feedback, [])


def truth(data: LogData, target: TargetPolicy) -> float:
    """The target's expected reward on the logged contexts, from the true means."""
    mu = dict(zip(MODELS, MU, strict=True))
    return float(
        np.mean([sum(p * mu[m] for m, p in row.items()) for row in target_distribution(data, target)])
    )


def test_ips_of_the_logging_policy_is_the_logged_mean() -> None:
    data = synthetic(500, seed=1)
    estimate = evaluate(data, TargetPolicy("softmax", temperature=0.1))
    logged = np.mean([data.feedback[d["request_id"]] for d in data.decisions])
    assert estimate.ips.value == pytest.approx(logged, abs=1e-9)
    assert estimate.snips.value == pytest.approx(logged, abs=1e-9)
    assert estimate.ess == pytest.approx(500)
    assert logged_value(data).value == pytest.approx(logged)


def test_ips_is_unbiased_over_many_small_logs() -> None:
    """The mean of IPS over independent logs of 40 decisions matches the truth (in expectation)."""
    target = TargetPolicy("greedy", mode="quality")
    errors = []
    for seed in range(150):
        data = synthetic(40, seed=seed)
        errors.append(evaluate(data, target).ips.value - truth(data, target))
    mean, se = float(np.mean(errors)), float(np.std(errors) / math.sqrt(len(errors)))
    assert abs(mean) < 4 * se + 1e-3


@pytest.mark.parametrize(
    "target",
    [
        TargetPolicy("greedy"),
        TargetPolicy("greedy", mode="cost"),
        TargetPolicy("softmax", weights=(0.0, 0.0, 1.0), temperature=0.05),
        TargetPolicy("ucb", mode="speed"),
    ],
)
def test_estimators_cover_the_truth(target: TargetPolicy) -> None:
    data = synthetic(4_000, seed=7)
    true_value = truth(data, target)
    estimate = evaluate(data, target)
    for interval in (estimate.ips, estimate.snips, estimate.dr):
        assert abs(interval.value - true_value) < 4 * interval.se
        assert interval.low < interval.value < interval.high
    # the direct model (mean reward per task and model) is right here: DR has less variance
    assert estimate.dr.se < estimate.ips.se


def test_target_weights_change_the_pick() -> None:
    data = synthetic(200, seed=3)
    picks = target_distribution(data, TargetPolicy("greedy", weights=(0.0, 1.0, 0.0)))
    for row, record in zip(picks, data.decisions, strict=True):
        best = MODELS[int(np.argmax(record["_terms"][:, 1]))]
        assert row[best] == 1.0 and sum(row.values()) == 1.0


def _priced_record(cost_scale: dict[str, Any] | None) -> dict[str, Any]:
    """Cheap m/a against dearer, better m/b, logged in cost mode on a log cost scale."""
    weights, logged = (0.0, 0.5, 0.5), LogScale(1e-7, 1.0)
    candidates = []
    for model, cost, quality in (("m/a", 0.0001, 0.5), ("m/b", 0.002, 0.65)):
        cost_term = weights[1] * (1 - logged.norm(cost))
        candidates.append(
            {"model": model, "score": cost_term + weights[2] * quality, "latency_term": 0.0,
             "cost_term": cost_term, "quality_term": weights[2] * quality, "exploration": 0.0,
             "latency_s": 1.0, "cost_usd": cost, "quality": quality}
        )  # fmt: skip
    record = {
        "type": "decision", "request_id": "r0", "profile": {"task": "general"}, "cached": False,
        "weights": dict(zip(("latency", "cost", "quality"), weights, strict=True)),
        "candidates": candidates, "model": "m/a", "propensity": 0.9, "policy": "softmax",
    }  # fmt: skip
    if cost_scale is not None:
        record["cost_scale"] = cost_scale
    return record


@pytest.mark.parametrize("recorded", [{"norm": "log", "scale_usd": [1e-7, 1.0]}, None])
def test_a_log_written_on_the_log_cost_scale_replays_on_the_scale_asked_for(
    recorded: dict[str, Any] | None,
) -> None:
    """Lines logged on the log scale (or before lines named their scale, when it was always a
    log) are read again on a linear replay scale, not mixed: at $0.02 a unit, m/b's quality is
    worth its price; on the log scale m/a's lower price wins."""
    data = LogData([_priced_record(recorded)], {"r0": 1.0}, [])
    target = TargetPolicy("greedy")  # each record's own weights
    on_log = target_distribution(data, target, scales=(LogScale(0.01, 120.0), LogScale(1e-7, 1.0)))
    on_linear = target_distribution(data, target, scales=(LogScale(0.01, 120.0), LinearScale(0.02)))
    assert on_log == [{"m/a": 1.0, "m/b": 0.0}]
    assert on_linear == [{"m/a": 0.0, "m/b": 1.0}]


def test_reward_spec_penalises_cost_and_falls_back_to_success() -> None:
    record = {
        "request_id": "x",
        "answered_by": "m/a",
        "candidates": [{"cost_usd": 0.5, "latency_s": 2.0}],
        "attempts": [{"cost_usd": 0.02, "latency_ms": 1500.0}, {"cost_usd": None, "latency_ms": 500.0}],
    }
    assert RewardSpec()(record, {}) == 1.0
    assert RewardSpec()(record, {"x": 0.4}) == 0.4
    assert RewardSpec(use_feedback=False)(record, {"x": 0.4}) == 1.0
    assert RewardSpec(cost_per_usd=10.0, latency_per_s=0.1)(record, {"x": 0.4}) == pytest.approx(
        0.4 - 0.2 - 0.2
    )
    assert RewardSpec()({**record, "answered_by": None}, {}) == 0.0


def test_records_without_propensity_or_from_the_cache_are_skipped_and_counted() -> None:
    data = synthetic(50, seed=2)
    data.decisions[0]["propensity"] = None
    data.decisions[1]["cached"] = True
    estimate = evaluate(data, TargetPolicy())
    assert estimate.n == 48
    assert estimate.skipped == {"cached": 1, "no_propensity": 1, "no_candidates": 0}
    for d in data.decisions:
        d["propensity"] = None
    with pytest.raises(ReplayError, match="no decision"):
        evaluate(data, TargetPolicy())


def test_target_policy_validates() -> None:
    with pytest.raises(ValueError, match="thompson"):
        TargetPolicy("thompson")
    with pytest.raises(ValueError, match="temperature"):
        TargetPolicy("softmax", temperature=0.0)
    with pytest.raises(ValueError, match="unknown mode"):
        evaluate(synthetic(5, 0), TargetPolicy(mode="warp"))


# --- a real log from the router --------------------------------------------------------------------


def lab_router(policy: str, seed: int = 0) -> tuple[Router, SimClock, World]:
    ids = [f"lab/m{i}" for i in range(4)]
    models = [
        Model(id=m, price_prompt=1e-6 * (i + 1), price_completion=2e-6, context_length=32_000)
        for i, m in enumerate(ids)
    ]
    clock = SimClock()
    settings = load_settings(
        exploration={"policy": policy, "seed": seed, "temperature": 0.05}, routing={"top_k": 8}
    )
    world = World.from_arrays(ids, [0.3, 0.5, 0.4, 0.8], [0.015, 0.02, 0.012, 0.03], [0.55, 0.7, 0.8, 0.75])
    return Router.from_settings(settings, Catalogue(models), clock=clock), clock, world


def write_log(path: Path, policy: str, requests: int, max_bytes: int = 1 << 20) -> None:
    router, clock, world = lab_router(policy)
    rng = np.random.default_rng(0)
    request = RouteRequest(prompt="Tell me about the sea.", max_tokens=200)
    with TrafficLog(path, max_bytes=max_bytes, backups=50, clock=clock) as log:
        for _ in range(requests):
            decision = router.decide(request)
            outcome, score = world.outcome(decision.model, rng)
            router.record(decision, outcome)
            log.log_decision(decision, [outcome], request=request)
            if score is not None:
                router.feedback(decision.request_id, score)
                log.log_feedback(decision.request_id, score)
            clock.advance(0.5)


def test_a_router_log_replays_its_own_policy_exactly(tmp_path: Path) -> None:
    path = tmp_path / "traffic.jsonl"
    write_log(path, "softmax", 400, max_bytes=50_000)
    data = read_log(path)
    assert len(data.files) > 2 and len(data.decisions) == 400 and len(data.feedback) == 400
    assert [d["time"] for d in data.decisions] == sorted(d["time"] for d in data.decisions)
    same = evaluate(data, TargetPolicy("softmax", temperature=0.05))
    logged = np.mean([data.feedback[d["request_id"]] for d in data.decisions])
    assert same.ips.value == pytest.approx(logged, rel=1e-5)
    assert same.agreement < 1.0
    others = evaluate_many(data, [TargetPolicy("greedy", mode="quality"), TargetPolicy("ucb", mode="speed")])
    assert all(0.0 <= e.snips.value <= 1.0 and e.n == 400 for e in others)


def test_a_thompson_log_cannot_be_replayed(tmp_path: Path) -> None:
    path = tmp_path / "traffic.jsonl"
    write_log(path, "thompson", 30)
    with pytest.raises(ReplayError, match="without a propensity"):
        evaluate(read_log(path), TargetPolicy())


def test_read_log_names_the_malformed_line(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text('{"v": 1, "type": "feedback", "request_id": "a", "score": 1}\nnot json\n')
    with pytest.raises(ReplayError, match=r"t.jsonl, line 2"):
        read_log(path)
    data = read_log(path, strict=False)
    assert data.malformed == 1 and data.feedback == {"a": 1.0}
    with pytest.raises(ReplayError, match="no such traffic log"):
        read_log(tmp_path / "absent.jsonl")


# --- outcome tables ----------------------------------------------------------------------------


def write_table(
    folder: Path, prompts: int, quality: dict[str, float], cost: dict[str, float], seed: int = 0
) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    table = folder / "outcomes.csv"
    with table.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "source",
                "dataset",
                "prompt_id",
                "model",
                "quality",
                "quality_raw",
                "quality_metric",
                "cost_usd",
                "output_chars",
                "split",
            ]
        )
        for i in range(prompts):
            for model, q in quality.items():
                score = float(rng.random() < q)
                writer.writerow(["synth", "d", f"p{i}", model, score, score, "exact", cost[model], 40, ""])
    with (folder / "prompts.jsonl").open("w") as handle:
        for i in range(prompts):
            text = f"Question {i}: what is the capital of country number {i}? Answer briefly."
            handle.write(
                json.dumps({"source": "synth", "dataset": "d", "prompt_id": f"p{i}", "prompt": text}) + "\n"
            )
    return table


def test_outcome_replay_finds_the_clearly_best_model(tmp_path: Path) -> None:
    quality = {"good": 0.92, "fair": 0.55, "poor": 0.15}
    table_path = write_table(tmp_path / "data", 400, quality, {"good": 1e-4, "fair": 1e-4, "poor": 1e-4})
    table = load_outcomes(table_path)
    assert table.source == "synth" and len(table) == 400 and table.models == ("fair", "good", "poor")
    report = replay_outcomes(table, policy="ucb", mode="quality", seed=3)
    assert report.best_fixed.name == "good"
    assert report.choices[200:].count("good") / 200 > 0.85
    assert report.regret_vs_best_fixed < 0.1
    assert report.oracle.quality >= report.best_fixed.quality
    fixed = {a.name: a for a in report.fixed}
    assert fixed["good"].quality == pytest.approx(table.quality[:, 1].mean())
    assert fixed["poor"].cost_usd == pytest.approx(400 * 1e-4)
    assert report.router.quality == pytest.approx(float(report.quality_trace.mean()))
    assert report.summary()["reference"] == "good" and report.rows()[0]["name"].startswith("router")


def test_outcome_replay_explores_by_shadow_and_pays_for_it(tmp_path: Path) -> None:
    quality = {"good": 0.8, "fair": 0.65, "poor": 0.5}
    cost = {"good": 2e-4, "fair": 1e-4, "poor": 1e-5}
    table = load_outcomes(write_table(tmp_path / "data", 300, quality, cost))
    plain = replay_outcomes(table, policy="ucb", mode="quality", seed=5)
    shadowed = replay_outcomes(table, policy="ucb", mode="quality", seed=5, shadow_explore=True)
    assert plain.shadows == 0 and plain.explored > 0 and shadowed.shadows > 0
    # Exploration happened beside the answers: none of them was an exploratory pick ...
    assert shadowed.explored == 0
    # ... and the shadows' spend is in the router's cost, answer by answer.
    rows = zip(_order(300, 5), shadowed.choices, strict=True)
    served = sum(table.cost[p, table.models.index(m)] for p, m in rows)
    assert shadowed.router.cost_usd == pytest.approx(served + shadowed.shadow_cost_usd)
    assert shadowed.router.cost_usd == pytest.approx(float(shadowed.cost_trace.sum()))
    assert shadowed.summary()["shadows"] == shadowed.shadows
    # ... and in its score: against a fixed arm (same constant latency), utility differs by the
    # cost and quality terms of what was paid and served (linear cost: dollars / reference).
    w_cost, w_quality = shadowed.weights[1], shadowed.weights[2]
    per_prompt = 300 * Settings().routing.cost_reference_usd
    good = next(a for a in shadowed.fixed if a.name == "good")
    expected = w_cost * (good.cost_usd - shadowed.router.cost_usd) / per_prompt
    expected += w_quality * (shadowed.router.quality - good.quality)
    assert shadowed.router.utility - good.utility == pytest.approx(expected, abs=1e-12)
    # It still learns which model is best, and serves it.
    assert shadowed.choices[150:].count("good") / 150 > 0.85
    # Off unless asked: the setting turns it on, as in the service.
    settings = load_settings(evaluation={"judge": {"model": "any/judge"}, "shadow": {"explore": True}})
    again = replay_outcomes(table, settings=settings, policy="ucb", mode="quality", seed=5)
    assert again.shadows == shadowed.shadows


def _order(n: int, seed: int) -> list[int]:
    return np.random.default_rng(seed).permutation(n).tolist()


def test_outcome_replay_uses_measured_latency_groups(tmp_path: Path) -> None:
    csv_path = tmp_path / "llmperf.csv"
    rows = ["provider,llama2_size,error_code,ttft_s,inter_token_latency_s"]
    rows += ["fast,7b,,0.1,0.005" for _ in range(120)] + ["slow,70b,,2.0,0.08" for _ in range(120)]
    rows += ["flaky,13b,500,,," for _ in range(50)] + ["flaky,13b,,0.3,0.01" for _ in range(100)]
    csv_path.write_text("\n".join(rows) + "\n")
    groups = load_latency(csv_path)
    assert groups.names == ["fast/7b", "slow/70b"]  # flaky failed a third of its requests: left out
    assert groups.assign(["dear", "cheap"], [2.0, 1.0]) == {"cheap": 0, "dear": 1}
    table = load_outcomes(write_table(tmp_path / "d", 50, {"x": 0.5, "y": 0.5}, {"x": 1e-3, "y": 1e-5}))
    report = replay_outcomes(table, policy="greedy", mode="speed", latency=groups, shuffle=False)
    fixed = {a.name: a for a in report.fixed}
    assert fixed["y"].latency_s == pytest.approx(0.1 + 0.005 * 9)  # cheapest: the fast group; 10 tokens
    assert fixed["x"].latency_s == pytest.approx(2.0 + 0.08 * 9)


def test_cost_quality_curve_buys_quality_with_cost(tmp_path: Path) -> None:
    table = load_outcomes(
        write_table(tmp_path / "d", 300, {"cheap": 0.4, "dear": 0.95}, {"cheap": 1e-6, "dear": 1e-2})
    )
    curve = cost_quality_curve(table, policy="ucb", quality_weights=(0.1, 1.0), seed=1)
    assert [p.quality_weight for p in curve] == [0.1, 1.0]
    assert curve[1].quality > curve[0].quality + 0.2 and curve[1].cost_usd > curve[0].cost_usd


def test_load_outcomes_drops_incomplete_prompts_and_names_bad_input(tmp_path: Path) -> None:
    table = write_table(tmp_path / "d", 10, {"x": 0.5, "y": 0.5}, {"x": 1e-3, "y": 1e-3})
    broken = [line for line in table.read_text().splitlines() if not line.startswith("synth,d,p3,x,")]
    table.write_text("\n".join(broken) + "\n")
    assert load_outcomes(table).dropped == 1
    bad_number = tmp_path / "bad" / "outcomes.csv"
    bad_number.parent.mkdir()
    bad_number.write_text("source,prompt_id,model,quality,cost_usd\nsynth,p1,x,high,0.1\n")
    with pytest.raises(ReplayError, match=r"line 2: not a number: 'high'"):
        load_outcomes(bad_number)
    no_column = tmp_path / "nocol.csv"
    no_column.write_text("source,prompt_id,model,score\nsynth,p1,x,1\n")
    with pytest.raises(ReplayError, match=r"missing column.*quality"):
        load_outcomes(no_column)
    with pytest.raises(ReplayError, match=r"prompts\.jsonl: cannot read"):
        load_outcomes(tmp_path / "d" / "outcomes.csv", tmp_path / "prompts.jsonl")


# --- the CLI ------------------------------------------------------------------------------------


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["replay", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_replays_a_traffic_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "traffic.jsonl"
    write_log(path, "softmax", 200)
    code, out, err = run_cli(capsys, str(path))
    assert code == 0, err
    assert "logged policy" in out and "greedy @ logged weights" in out and "softmax" in out
    code, out, err = run_cli(capsys, str(path), "--policy", "greedy", "--mode", "cost", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert [t["target"] for t in data["targets"]] == ["greedy @ cost"]
    assert set(data["targets"][0]) >= {"ips", "snips", "dr", "ess", "n"}


def test_cli_replays_an_outcome_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    table = write_table(tmp_path / "d", 60, {"x": 0.8, "y": 0.3}, {"x": 1e-3, "y": 1e-4})
    code, out, err = run_cli(capsys, str(table), "--mode", "quality", "--limit", "40", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["prompts"] == 40 and data["reference"] == "x" and data["rows"][0]["name"].startswith("router")
    code, out, err = run_cli(capsys, str(table), "--policy", "greedy", "--seed", "2")
    assert code == 0, err
    assert "oracle (per prompt)" in out and "regret" in out


@pytest.mark.parametrize(
    ("content", "argv", "message"),
    [
        (None, [], "no such file"),
        ('{"v": 1, "type": "feedback", "request_id": "a", "score": 1}\n{"v": 1, "oops"\n', [], "line 2"),
        ("source,prompt_id,model,score\nsynth,p1,x,1\n", [], "missing column"),
        (
            '{"v": 1, "type": "feedback", "request_id": "a", "score": 1}\n',
            ["--policy", "thompson"],
            "thompson",
        ),
        (
            '{"v": 1, "type": "feedback", "request_id": "a", "score": 1}\n',
            ["--temperature", "0"],
            "temperature",
        ),
        ('{"v": 1, "type": "feedback", "request_id": "a", "score": 1}\n', [], "no decision"),
    ],
)
def test_cli_bad_input_exits_2_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, argv: list[str], message: str
) -> None:
    path = tmp_path / ("input.csv" if content and content.startswith("source") else "input.jsonl")
    if content is not None:
        path.write_text(content)
    code, out, err = run_cli(capsys, str(path), *argv)
    assert code == 2
    assert message in err and "Traceback" not in err and out == ""


# --- honesty: what the reward is, small samples, impossible figures ----------------------------------


def test_estimates_say_what_the_reward_is_and_warn_on_a_small_effective_sample() -> None:
    data = synthetic(400, seed=3, temperature=0.02)  # sharp logging: a far-off target rarely agrees
    far = evaluate(data, TargetPolicy("greedy", weights=(0.0, 0.0, 1.0)))
    near = evaluate(data, TargetPolicy("softmax", temperature=0.02))
    assert "feedback score" in far.reward and far.reward_range == (0.0, 1.0)
    assert near.warnings == [] or all("effective sample size" not in w for w in near.warnings)
    if far.ess < 30:
        assert any("effective sample size" in w for w in far.warnings)


def test_an_ips_figure_outside_the_reward_range_is_flagged(tmp_path: Path) -> None:
    data = synthetic(50, seed=4)
    for record in data.decisions:
        record["propensity"] = record["propensity"] / 50  # wrong, too small propensities inflate IPS
    estimate = evaluate(data, TargetPolicy("softmax", weights=(0.2, 0.3, 0.5), temperature=0.1))
    assert not estimate.ips_in_range
    assert any("outside the reward range" in w for w in estimate.warnings)
    log = tmp_path / "log.jsonl"
    log.write_text(
        "".join(json.dumps({k: v for k, v in r.items() if k != "_terms"}) + "\n" for r in data.decisions)
        + "".join(
            json.dumps({"v": 1, "type": "feedback", "request_id": rid, "score": s}) + "\n"
            for rid, s in data.feedback.items()
        )
    )
    assert main(["replay", str(log), "--policy", "softmax", "--temperature", "0.1"]) == 0


def test_the_cli_prints_the_reward_and_flags_instead_of_a_figure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    test_an_ips_figure_outside_the_reward_range_is_flagged(tmp_path)
    out = capsys.readouterr().out
    assert "reward: the feedback score" in out
    assert "out of range" in out and "warning:" in out


def _strict_json(text: str) -> Any:
    """What jq or a browser accepts: NaN and Infinity are not JSON."""

    def refuse(name: str) -> None:
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_a_table_without_costs_prints_no_nan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # examples/data's RouteLLM sample has no costs: the cost ratio has no reference to divide by
    table = write_table(tmp_path / "d", 30, {"x": 0.8, "y": 0.3}, {"x": 0.0, "y": 0.0})
    code, out, err = run_cli(capsys, str(table), "--mode", "quality", "--curve", "--json")
    assert code == 0, err
    data = _strict_json(out)
    assert data["cost_ratio"] is None and data["curve"][0]["cost_ratio"] is None
    assert data["quality_ratio"] is not None
    code, out, err = run_cli(capsys, str(table), "--mode", "quality", "--curve")
    assert code == 0, err
    assert "nan" not in out.lower() and "of its cost: the table has no costs" in out
