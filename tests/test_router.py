from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from adaptive_router import NoEligibleModel, RequestError, load_settings
from adaptive_router.core import Catalogue, Decision, Model, Outcome, Router, RouteRequest, Softmax
from adaptive_router.simulator import LAB_IDS, SimClock, lab, run

CAPS = ["tools", "vision", "json_mode"]


def model(i: int, **kw: object) -> Model:
    base: dict[str, object] = {
        "id": f"p{i % 3}/m{i}",
        "price_prompt": 1e-6,
        "price_completion": 2e-6,
        "context_length": 32_000,
        "ttft_s": 0.5,
        "tpot_s": 0.02,
        "quality": 0.6,
    }
    base.update(kw)
    return Model(**base)  # type: ignore[arg-type]


def router_for(models: list[Model], policy: str = "greedy", seed: int = 0, **routing: object) -> Router:
    # No decision cache: these properties are about each decision, made afresh.
    settings_ = load_settings(
        exploration={"policy": policy, "seed": seed}, routing=routing or {}, cache={"decision_ttl_seconds": 0}
    )
    return Router.from_settings(settings_, Catalogue(models), clock=SimClock())


model_strategy = st.builds(
    dict,
    price_prompt=st.floats(0, 1e-4),
    price_completion=st.floats(0, 2e-4),
    context_length=st.integers(1_000, 200_000),
    max_output_tokens=st.integers(0, 64_000),
    ttft_s=st.floats(0.05, 20.0),
    tpot_s=st.floats(0.001, 0.2),
    quality=st.floats(0.0, 1.0),
    capabilities=st.sets(st.sampled_from(CAPS)).map(lambda s: frozenset(s | {"streaming"})),
)
catalogue_strategy = st.lists(model_strategy, min_size=1, max_size=12).map(
    lambda specs: [model(i, **spec) for i, spec in enumerate(specs)]
)
request_strategy = st.builds(
    RouteRequest,
    prompt=st.text(min_size=1, max_size=400),
    max_tokens=st.one_of(st.none(), st.integers(1, 70_000)),
    mode=st.sampled_from([None, "speed", "cost", "quality", "balanced"]),
    max_latency_ms=st.one_of(st.none(), st.floats(100.0, 120_000.0)),
    max_cost_usd=st.one_of(st.none(), st.floats(0.0, 0.5)),
    capabilities=st.sets(st.sampled_from(CAPS)).map(frozenset),
    allow=st.sampled_from([(), ("p0/*",), ("p0/*", "p1/*")]),
    deny=st.sampled_from([(), ("p2/*",), ("*/m0",)]),
)
history_strategy = st.lists(
    st.tuples(
        st.integers(0, 11),
        st.booleans(),
        st.floats(0.01, 30.0),
        st.integers(1, 2000),
        st.one_of(st.none(), st.floats(0, 1)),
    ),
    max_size=25,
)


def feed(
    router: Router, history: list[tuple[int, bool, float, int, float | None]], n: int | None = None
) -> None:
    """Replay ``history`` against the first ``n`` models (default: all)."""
    n = n or len(router.catalogue)
    for i, (row, ok, latency, tokens, score) in enumerate(history):
        decision = router.decide(RouteRequest(prompt=f"warm {i}", request_id=f"h{i}"))
        name = router.catalogue.ids[row % n]
        router.record(
            decision,
            Outcome(model=name, success=ok, latency_s=latency, ttft_s=latency / 3, completion_tokens=tokens),
        )
        if score is not None and ok:
            router.feedback(decision.request_id, score)
        router.clock.advance(0.7)  # type: ignore[attr-defined]


def meets(router: Router, request: RouteRequest, name: str) -> bool:
    """The constraints, checked one model at a time with plain Python."""
    cat, row = router.catalogue, router.catalogue.index[name]
    m = cat.models[row]
    profile = router.profile(request)
    est = router.learner.estimates(router.clock())
    out = router.expected_tokens(est, profile, request.max_tokens)
    checks = [
        profile.prompt_tokens + (request.max_tokens or 0) <= m.context_length,
        request.max_tokens is None or not m.max_output_tokens or m.max_output_tokens >= request.max_tokens,
        request.capabilities <= m.capabilities,
        not request.allow or any(_glob(p, name) for p in request.allow),
        not any(_glob(p, name) for p in request.deny),
    ]
    if request.max_latency_ms is not None:
        checks.append(est.ttft_q[row] + est.tpot_q[row] * out <= request.max_latency_ms / 1000 * (1 + 1e-12))
    if request.max_cost_usd is not None:
        answer = request.max_tokens if request.max_tokens is not None else out
        checks.append(
            m.price_prompt * profile.prompt_tokens + m.price_completion * answer
            <= request.max_cost_usd * (1 + 1e-12)
        )
    return all(checks)


def _glob(pattern: str, name: str) -> bool:
    from fnmatch import fnmatchcase

    return fnmatchcase(name, pattern)


@settings(max_examples=150, deadline=None)
@given(
    catalogue_strategy,
    request_strategy,
    history_strategy,
    st.sampled_from(["greedy", "ucb", "thompson", "softmax"]),
)
def test_router_choice_meets_every_constraint_or_raises(models, request, history, policy) -> None:  # type: ignore[no-untyped-def]
    """Property 1."""
    router = router_for(models, policy)
    feed(router, history)
    try:
        decision = router.decide(request)
    except NoEligibleModel as exc:
        assert not any(meets(router, request, m.id) for m in models), exc.constraint
        return
    for name in decision.chain:
        assert meets(router, request, name), name


@settings(max_examples=150, deadline=None)
@given(
    catalogue_strategy,
    history_strategy,
    st.sampled_from([None, "speed", "cost", "quality", "balanced"]),
    st.floats(1.01, 4.0),  # strictly slower: an exact tie may go either way
    st.floats(1.0, 4.0),
    st.floats(0.0, 1.0),
)
def test_router_dominated_model_never_changes_the_winner(
    models, history, mode, slower, pricier, worse
) -> None:  # type: ignore[no-untyped-def]
    """Property 2: fixed reference scales, not min/max of whichever models are present."""
    router = router_for(models)
    feed(router, history)
    request = RouteRequest(prompt="Tell me about tides.", mode=mode)
    winner = router.decide(request).model
    row = router.catalogue.index[winner]
    est = router.learner.estimates(router.clock())
    w = router.catalogue.models[row]
    # A new model's prior is scaled by its provider's measured speed: undo that, so that what
    # the router will believe of it is ``slower`` than the winner's estimate.
    speed = float(router.learner.provider_factors(router.clock())[0])
    dominated = model(
        99,
        price_prompt=w.price_prompt * pricier,
        price_completion=w.price_completion * pricier,
        ttft_s=float(est.ttft[row]) * slower / speed,
        tpot_s=float(est.tpot[row]) * slower / speed,
        quality=float(est.value[:, row].min()) * worse,
        context_length=w.context_length,
    )
    bigger = router_for([*models, dominated])
    feed(bigger, history, n=len(models))
    # Models tied with the winner (to rounding) are winners too: which one argmax meets first
    # may differ by a unit in the last place between arrays of different lengths.
    best = router.rank(request).candidates
    tied = {c.model for c in best if c.score >= best[0].score - 1e-9}
    assert bigger.decide(request).model in tied | {winner}


def _rank(router: Router, request: RouteRequest, name: str) -> int:
    scores = {c.model: c.score for c in router.rank(request).candidates}
    return sum(1 for s in scores.values() if s > scores[name] + 1e-12)


@settings(max_examples=100, deadline=None)
@given(catalogue_strategy, st.integers(0, 11), st.floats(0.05, 0.95), st.integers(1, 30))
def test_router_faster_measurements_never_lower_a_models_rank_in_speed_mode(models, pick, factor, n) -> None:  # type: ignore[no-untyped-def]
    """Property 3 (latency, speed mode)."""
    target = models[pick % len(models)].id
    slow, fast = router_for(models), router_for(models)
    for i in range(n):
        for router, scale in ((slow, 1.0), (fast, factor)):
            d = router.decide(RouteRequest(prompt="x", request_id=f"r{i}"))
            latency = 2.0 * scale
            router.record(
                d,
                Outcome(
                    model=target, success=True, latency_s=latency, ttft_s=latency / 4, completion_tokens=100
                ),
            )
    request = RouteRequest(prompt="Tell me about tides.", mode="speed")
    assert _rank(fast, request, target) <= _rank(slow, request, target)


@settings(max_examples=100, deadline=None)
@given(catalogue_strategy, st.integers(0, 11), st.floats(0.0, 1.0), st.floats(0.0, 1.0), st.integers(1, 20))
def test_router_better_feedback_never_lowers_a_models_rank_in_quality_mode(
    models, pick, low, high, n
) -> None:  # type: ignore[no-untyped-def]
    """Property 3 (quality, quality mode)."""
    assume(high >= low)
    target = models[pick % len(models)].id
    poor, good = router_for(models), router_for(models)
    for i in range(n):
        for router, score in ((poor, low), (good, high)):
            d = router.decide(RouteRequest(prompt="x", request_id=f"r{i}"))
            router.record(
                d, Outcome(model=target, success=True, latency_s=1.0, ttft_s=0.3, completion_tokens=50)
            )
            assert router.feedback(d.request_id, score)
    request = RouteRequest(prompt="Tell me about tides.", mode="quality")
    assert _rank(good, request, target) <= _rank(poor, request, target)


@settings(max_examples=100, deadline=None)
@given(catalogue_strategy, st.integers(0, 11), st.floats(0.01, 1.0))
def test_router_cheaper_price_never_lowers_a_models_rank_in_cost_mode(models, pick, factor) -> None:  # type: ignore[no-untyped-def]
    """Property 3 (cost, cost mode): cost is not learned, it is the catalogue's price."""
    target = pick % len(models)
    m = models[target]
    cheaper = [
        *models[:target],
        model(
            target,
            **{
                **_spec(m),
                "price_prompt": m.price_prompt * factor,
                "price_completion": m.price_completion * factor,
            },
        ),
        *models[target + 1 :],
    ]
    request = RouteRequest(prompt="Tell me about tides.", mode="cost")
    assert _rank(router_for(cheaper), request, m.id) <= _rank(router_for(models), request, m.id)


def _spec(m: Model) -> dict[str, object]:
    return {
        "price_prompt": m.price_prompt,
        "price_completion": m.price_completion,
        "context_length": m.context_length,
        "max_output_tokens": m.max_output_tokens,
        "ttft_s": m.ttft_s,
        "tpot_s": m.tpot_s,
        "quality": m.quality,
        "capabilities": m.capabilities,
    }


@settings(max_examples=100, deadline=None)
@given(catalogue_strategy, request_strategy, st.integers(0, 2**32 - 1))
def test_router_softmax_propensity_is_the_probability_of_the_choice(models, request, seed) -> None:  # type: ignore[no-untyped-def]
    """Property 4."""
    router = router_for(models, "softmax", seed)
    try:
        ranked = router.rank(request)
    except NoEligibleModel:
        return
    decision = router.decide(request)
    temperature = router.policy.temperature  # type: ignore[attr-defined]
    scores = np.array([c.score for c in ranked.candidates])
    p = np.exp((scores - scores.max()) / temperature)
    p /= p.sum()
    assert p.sum() == pytest.approx(1.0)
    expected = dict(zip([c.model for c in ranked.candidates], p, strict=True))
    assert decision.propensity == pytest.approx(expected[decision.model], rel=1e-9, abs=1e-12)


def test_softmax_samples_match_their_probabilities() -> None:
    policy = Softmax(temperature=0.05)
    score = np.array([0.5, 0.45, -np.inf, 0.4, 0.3])
    p = policy.probabilities(score.copy())
    assert p[2] == 0.0
    assert p.sum() == pytest.approx(1.0)
    rng = np.random.default_rng(7)
    picks = Counter(policy.choose(score, None, 0, (1, 0, 0), rng).index for _ in range(20_000))  # type: ignore[arg-type]
    assert picks[2] == 0
    for i in (0, 1, 3, 4):
        assert picks[i] / 20_000 == pytest.approx(p[i], abs=0.015)


# --- learning in simulation (properties 6 and 7) --------------------------------------------

IDS = LAB_IDS
_lab = lab


@pytest.mark.parametrize("policy", ["ucb", "thompson"])
@pytest.mark.parametrize("seed", [0, 1])
def test_router_learns_the_best_model_in_a_stationary_world(policy: str, seed: int) -> None:
    """Property 6: over 90% of decisions go to the best model after 2,000 requests."""
    router, clock, world = _lab(policy, seed)
    truth = world.expected_score(router.config.default_weights, router, prompt_tokens=6)
    best = IDS[int(np.argmax(truth))]
    trace = run(router, world, 2_500, clock, seconds_per_request=0.5, seed=seed)
    assert trace.share(best, start=2_000) > 0.9


@pytest.mark.parametrize("policy", ["ucb", "thompson"])
def test_router_moves_traffic_off_a_model_that_slows_down_fivefold(policy: str) -> None:
    """Property 7: share of the slowed model in speed mode under 10% within 40 requests."""
    router, clock, world = _lab(policy, 3)
    truth = world.expected_score(router.config.modes["speed"], router, prompt_tokens=6)
    fastest = IDS[int(np.argmax(truth))]
    trace = run(
        router, world, 2_000, clock, mode="speed", seed=3, events={1_500: lambda w: w.slow_down(fastest, 5.0)}
    )
    assert trace.share(fastest, 1_000, 1_500) > 0.8
    assert trace.share(fastest, 1_540, 2_000) < 0.1


# --- plain behaviour ---------------------------------------------------------------------------


def test_router_modes_pick_what_they_promise() -> None:
    fast = model(0, ttft_s=0.1, tpot_s=0.002, price_prompt=5e-6, price_completion=2e-5, quality=0.5)
    cheap = model(1, ttft_s=2.0, tpot_s=0.05, price_prompt=1e-8, price_completion=2e-8, quality=0.5)
    smart = model(2, ttft_s=2.0, tpot_s=0.05, price_prompt=5e-6, price_completion=2e-5, quality=0.95)
    router = router_for([fast, cheap, smart])
    pick = {
        mode: router.decide(RouteRequest(prompt="hello", mode=mode)).model
        for mode in ("speed", "cost", "quality")
    }
    assert pick == {"speed": fast.id, "cost": cheap.id, "quality": smart.id}


@settings(max_examples=100, deadline=None)
@given(
    st.floats(0.0, 1.0),
    st.floats(0.0, 1.0),
    st.floats(1e-9, 1e-4),
    st.floats(1.5, 50.0),
    st.floats(0.05, 0.95),
    st.sampled_from([0.002, 0.02, 0.5]),
)
def test_router_linear_cost_trades_quality_for_dollars_at_one_rate(
    q_cheap: float, q_dear: float, price: float, ratio: float, quality_weight: float, reference: float
) -> None:
    """The dearer of two otherwise equal models wins exactly when its extra quality is worth its
    extra dollars at the rate ``w_quality`` per ``w_cost / reference``: whatever the prices, so a
    per-cell choice never spends money a fixed mix of models would spend better."""
    cheap = model(0, price_prompt=price, price_completion=price, quality=q_cheap)
    dear = model(1, price_prompt=price * ratio, price_completion=price * ratio, quality=q_dear)
    router = router_for([cheap, dear], cost_reference_usd=reference)
    weights = (0.0, 1.0 - quality_weight, quality_weight)
    decision = router.decide(RouteRequest(prompt="Tell me about tides.", weights=weights))
    by_id = {c.model: c for c in decision.candidates}
    extra_dollars = by_id[dear.id].cost_usd - by_id[cheap.id].cost_usd
    gain = quality_weight * (q_dear - q_cheap) - (1.0 - quality_weight) * extra_dollars / reference
    assume(abs(gain) > 1e-9)  # an exact tie may go either way
    assert decision.model == (dear.id if gain > 0 else cheap.id)


def _cost_gap(router: Router) -> float:
    terms = {c.model: c.cost_term for c in router.decide(RouteRequest(prompt="hi", mode="cost")).candidates}
    return terms["p0/m0"] - terms["p1/m1"]


def test_router_log_cost_scale_is_still_available() -> None:
    """``routing.cost_norm: log``: a tenfold price ratio weighs the same at any price; on the
    default linear scale the same ratio weighs what the dollars between them weigh."""
    cheap_pair = [
        model(0, price_prompt=1e-7, price_completion=1e-7),
        model(1, price_prompt=1e-6, price_completion=1e-6),
    ]
    dear_pair = [
        model(0, price_prompt=1e-5, price_completion=1e-5),
        model(1, price_prompt=1e-4, price_completion=1e-4),
    ]
    log_gaps = [_cost_gap(router_for(pair, cost_norm="log")) for pair in (cheap_pair, dear_pair)]
    assert log_gaps[0] == pytest.approx(log_gaps[1]) and log_gaps[0] > 0
    linear_gaps = [_cost_gap(router_for(pair)) for pair in (cheap_pair, dear_pair)]
    assert linear_gaps[1] == pytest.approx(100 * linear_gaps[0]) and linear_gaps[0] > 0


def test_router_reason_names_the_term_that_beat_the_runner_up() -> None:
    """Every cheap model's cost term is near the full cost weight on the linear scale, so the
    largest term says little; the reason names the term where the head beats the runner-up."""
    smart, plain = model(0, quality=0.9), model(1, quality=0.5)
    decision = router_for([smart, plain]).decide(RouteRequest(prompt="hi"))
    assert decision.model == smart.id
    assert decision.reason.endswith(f"ahead of {plain.id} on quality)")
    fast = model(2, ttft_s=0.05, tpot_s=0.001, quality=0.5)
    decision = router_for([plain, fast]).decide(RouteRequest(prompt="hi", mode="speed"))
    assert decision.model == fast.id and decision.reason.endswith(f"ahead of {plain.id} on latency)")


def test_router_per_request_weights_are_normalised_and_validated() -> None:
    router = router_for([model(0), model(1, quality=0.9)])
    d = router.decide(RouteRequest(prompt="hi", weights=(0, 0, 5)))
    assert d.weights == (0.0, 0.0, 1.0) and d.model == "p1/m1"
    for bad in ((0.0, 0.0, 0.0), (-1.0, 1.0, 1.0), (math.nan, 1.0, 1.0)):
        with pytest.raises(RequestError, match="weights"):
            router.decide(RouteRequest(prompt="hi", weights=bad))
    with pytest.raises(RequestError, match="unknown priority mode 'warp'"):
        router.decide(RouteRequest(prompt="hi", mode="warp"))


def test_router_candidate_terms_add_up_to_the_score() -> None:
    router = router_for([model(i, ttft_s=0.2 * (i + 1), quality=0.1 * (i + 2)) for i in range(5)], "ucb")
    for c in router.decide(RouteRequest(prompt="hi", mode="balanced")).candidates:
        assert c.score == pytest.approx(c.latency_term + c.cost_term + c.quality_term + c.exploration)


def test_router_no_eligible_model_names_the_constraint() -> None:
    router = router_for([model(0, context_length=4_000), model(1, context_length=8_000)])
    with pytest.raises(NoEligibleModel) as info:
        router.decide(RouteRequest(prompt="x" * 40_000))
    assert info.value.constraint == "context_length"
    with pytest.raises(NoEligibleModel) as info:
        router.decide(RouteRequest(prompt="hi", capabilities=frozenset({"vision"})))
    assert info.value.constraint == "capabilities"
    with pytest.raises(NoEligibleModel) as info:
        router.decide(RouteRequest(prompt="hi", max_cost_usd=0.0))
    assert info.value.constraint == "max_cost_usd"


def test_router_pinned_model_leads_and_falls_back_when_unavailable() -> None:
    router = router_for([model(i, quality=0.1 * i) for i in range(5)], fallback_models=["p0/m0"])
    pinned = router.decide(RouteRequest(prompt="hi", model="p1/m1"))
    assert pinned.model == "p1/m1" and pinned.propensity == 1.0 and "p1/m1" not in pinned.fallbacks
    router.set_available("p1/m1", False)
    moved = router.decide(RouteRequest(prompt="hi", model="p1/m1"))
    assert moved.model != "p1/m1" and "p1/m1" in moved.reason
    with pytest.raises(RequestError, match="not in the catalogue"):
        router.decide(RouteRequest(prompt="hi", model="nope/x"))


def test_router_fallback_models_close_the_chain() -> None:
    models = [model(i, quality=0.9 - 0.05 * i) for i in range(8)]
    router = router_for(models, top_k=2, fallback_models=["p1/m7"])
    decision = router.decide(RouteRequest(prompt="hi", mode="quality"))
    assert decision.chain == ["p0/m0", "p1/m1", "p1/m7"]
    assert router.decide(RouteRequest(prompt="hi", mode="quality", fallback=False)).chain == ["p0/m0"]


def test_router_feedback_needs_a_recorded_answer() -> None:
    router = router_for([model(0)])
    d = router.decide(RouteRequest(prompt="hi"))
    assert router.feedback(d.request_id, 1.0) is False  # not answered yet
    router.record(d, Outcome(model=d.model, success=True, latency_s=0.5, ttft_s=0.2, completion_tokens=10))
    assert router.feedback(d.request_id, 1.0) is True
    with pytest.raises(RequestError, match="score"):
        router.feedback(d.request_id, 2.0)


def test_router_messages_with_image_parts_profile_the_text() -> None:
    router = router_for([model(0)])
    messages = [
        {"role": "system", "content": "be brief"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Translate into French: good night"},
                {"type": "image_url", "image_url": {"url": "data:,"}},
            ],
        },
    ]
    assert router.decide(RouteRequest(messages=messages)).profile.task == "translation"


# --- learner cells -----------------------------------------------------------------------------


def router_with_cells(models: list[Model], cells: str, policy: str = "greedy") -> Router:
    settings_ = load_settings(exploration={"policy": policy, "seed": 0}, profile={"cells": cells})
    return Router.from_settings(settings_, Catalogue(models), clock=SimClock())


SHORT, LONG = "tell me a story", "tell me a story " + "about the sea " * 200  # buckets 0 and 1


def test_router_learner_rows_are_the_profilers_cells() -> None:
    by_task = router_with_cells([model(0)], "task")
    assert by_task.learner.tasks == by_task.profiler.tasks
    router = router_with_cells([model(0)], "task_and_length")
    assert router.learner.tasks == router.profiler.cells
    assert router.learner.quality.w.shape == (15, 1)  # 5 task classes x 3 length buckets
    short, long = router.decide(RouteRequest(prompt=SHORT)), router.decide(RouteRequest(prompt=LONG))
    assert (short.profile.cell_name, long.profile.cell_name) == ("general/0", "general/1")
    assert short.profile.task == long.profile.task == "general"
    assert long.to_dict()["profile"]["cell"] == "general/1"


@pytest.mark.parametrize("cells", ["task", "task_and_length"])
def test_router_record_and_feedback_reach_the_decisions_cell(cells: str) -> None:
    router = router_with_cells([model(0), model(1)], cells)
    decision = router.decide(RouteRequest(prompt=LONG, model="p1/m1"))
    router.record(decision, Outcome(model="p1/m1", success=True, latency_s=1.0, completion_tokens=50))
    assert router.feedback(decision.request_id, 0.25)
    touched = {(int(r), int(m)) for r, m in zip(*np.nonzero(router.learner.quality.w), strict=True)}
    assert touched == {(decision.profile.cell, 1)}
    assert set(zip(*np.nonzero(router.learner.success.w), strict=True)) == {(decision.profile.cell, 1)}
    expected_row = router.profiler.cells.index("general/1" if cells == "task_and_length" else "general")
    assert decision.profile.cell == expected_row


def _teach(router: Router, prompt: str, scores: dict[str, float], rounds: int = 15) -> None:
    """Each model answers ``prompt`` ``rounds`` times (pinned) and gets its score as feedback."""
    for _ in range(rounds):
        for name, score in scores.items():
            decision = router.decide(RouteRequest(prompt=prompt, model=name))
            outcome = Outcome(model=name, success=True, latency_s=1.0, ttft_s=0.3, completion_tokens=50)
            router.record(decision, outcome)
            router.feedback(decision.request_id, score)
            router.clock.advance(1.0)  # type: ignore[attr-defined]


def test_router_task_and_length_cells_learn_a_model_per_length() -> None:
    """Short prompts suit one model and long ones the other: only length cells can tell."""
    a, b = model(0), model(1)  # identical priors, prices and latency
    picks = {}
    for cells in ("task", "task_and_length"):
        router = router_with_cells([a, b], cells)
        _teach(router, SHORT, {a.id: 0.9, b.id: 0.3})
        _teach(router, LONG, {a.id: 0.2, b.id: 0.7})
        picks[cells] = [router.decide(RouteRequest(prompt=p, mode="quality")).model for p in (SHORT, LONG)]
    assert picks["task_and_length"] == [a.id, b.id]
    assert picks["task"] == [a.id, a.id]  # one row for both lengths: a's mean 0.55 beats b's 0.5


def test_router_decision_cache_reuses_deterministic_decisions_within_its_ttl() -> None:
    models = [model(i, quality=0.5 + 0.05 * i) for i in range(4)]
    clock = SimClock()
    router = Router.from_settings(
        load_settings(exploration={"policy": "greedy"}, cache={"decision_ttl_seconds": 60.0}),
        Catalogue(models),
        clock=clock,
    )
    first = router.decide(RouteRequest(prompt="hello there", mode="quality"))
    again = router.decide(RouteRequest(prompt="hello again, how are you", mode="quality"))
    assert again.cached and not first.cached
    assert again.chain == first.chain and again.request_id != first.request_id
    assert again.profile.prompt_tokens != first.profile.prompt_tokens  # the new request's own profile
    other = router.decide(RouteRequest(prompt="hello there", mode="cost"))  # another key
    assert not other.cached
    router.set_available(first.model, False)  # a breaker opened: what was cached no longer holds
    moved = router.decide(RouteRequest(prompt="hello there", mode="quality"))
    assert not moved.cached and moved.model != first.model
    clock.advance(61.0)  # past the TTL: decided afresh
    assert not router.decide(RouteRequest(prompt="hello there", mode="quality")).cached


@pytest.mark.parametrize("policy", ["ucb", "thompson", "softmax"])
def test_router_decision_cache_is_bypassed_when_the_policy_explores(policy: str) -> None:
    models = [model(i) for i in range(4)]
    router = Router.from_settings(
        load_settings(exploration={"policy": policy, "seed": 1}, cache={"decision_ttl_seconds": 60.0}),
        Catalogue(models),
        clock=SimClock(),
    )
    decisions = [router.decide(RouteRequest(prompt="hello", mode="quality")) for _ in range(5)]
    assert not any(d.cached for d in decisions)


README_EXAMPLES = [
    # (the text as the README shows it, the request it makes)
    (
        '"max_latency_ms": 4000, "max_cost_usd": 0.002',
        RouteRequest(
            prompt="Summarise the plot of Hamlet in two sentences.",
            mode="speed",
            max_latency_ms=4000,
            max_cost_usd=0.002,
        ),
    ),
    (
        'mode="quality",\n                                      max_latency_ms=8000',
        RouteRequest(prompt="Prove that sqrt(2) is irrational", mode="quality", max_latency_ms=8000),
    ),
    (
        '"Write a regex for emails" --dry-run --priority cost --max-latency 12000',
        RouteRequest(prompt="Write a regex for emails", mode="cost", max_latency_ms=12000),
    ),
    (
        '"Write a regex for emails" --dry-run --priority speed --max-ttft 600',
        RouteRequest(prompt="Write a regex for emails", mode="speed", max_ttft_ms=600),
    ),
]


@pytest.mark.parametrize(("shown", "request_"), README_EXAMPLES, ids=[e[0][:40] for e in README_EXAMPLES])
def test_readme_latency_examples_find_a_model_on_a_fresh_start(shown: str, request_: RouteRequest) -> None:
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert shown in readme  # the example is still the README's
    settings_path = Path(__file__).resolve().parents[1] / "settings.yaml"
    router = Router.from_settings(load_settings(settings_path))
    assert router.decide(request_).model  # nothing learned yet: the priors alone must allow it


def test_feedback_memory_keeps_the_last_answers_by_model_id() -> None:
    """A library router remembers its last ``feedback_memory`` answered requests, by model id."""
    router = Router.from_settings(load_settings(learning={"feedback_memory": 2}, exploration={"seed": 0}))
    decisions = [router.decide(RouteRequest(prompt=f"question {i}")) for i in range(3)]
    for d in decisions:
        outcome = Outcome(model=d.model, success=True, latency_s=0.5, ttft_s=0.2, completion_tokens=10)
        router.record(d, outcome)
    assert router.feedback(decisions[0].request_id, 1.0) is False  # the oldest of three went
    assert all(router.feedback(d.request_id, 1.0) for d in decisions[1:])


class _LastPlace:
    """A policy that always explores: it picks the worst eligible score (what a bonus can do)."""

    name = "last-place"

    def choose(self, score, est, task, weights, rng):  # type: ignore[no-untyped-def]
        from adaptive_router.core._scoring import Choice

        finite = np.where(np.isfinite(score), score, np.inf)
        return Choice(int(finite.argmin()), 0.25, None)


def test_router_explores_by_shadow_only_while_the_gate_allows() -> None:
    best, mid, worst = (model(i, quality=q) for i, q in enumerate((0.9, 0.7, 0.5)))
    router = router_for([best, mid, worst])
    router.policy = _LastPlace()
    request = RouteRequest(prompt="Explain tides.", mode="quality")
    on_policy = router.decide(request)
    assert on_policy.model == worst.id and on_policy.explored and on_policy.shadow is None
    assert on_policy.propensity == 0.25
    allowed = [True]
    router.shadow_gate = lambda: allowed[0]
    shadowed = router.decide(request)
    # The best-scoring model answers; the pick goes beside it; the answer was not an exploration.
    assert shadowed.model == best.id and shadowed.shadow == worst.id
    assert not shadowed.explored and shadowed.propensity == 1.0
    assert shadowed.to_dict()["shadow"] == worst.id
    # A caller that will not send the shadow (POST /route) gets the pick itself.
    unsent = router.decide(request, shadows=False)
    assert unsent.model == worst.id and unsent.shadow is None and unsent.propensity == 0.25
    allowed[0] = False  # e.g. the shadow budget is spent: the pick answers again
    spent = router.decide(request)
    assert spent.model == worst.id and spent.shadow is None and spent.explored
    # A pinned model is never swapped for a shadow.
    allowed[0] = True
    pinned = router.decide(RouteRequest(prompt="Explain tides.", model=mid.id))
    assert pinned.model == mid.id and pinned.shadow is None


def test_exploring_by_shadow_counts_quality_uncertainty_where_no_answer_is_scored() -> None:
    # Without a score for any answer, exploring on the answer would teach nothing about quality;
    # beside it, by shadow, the pick is judged for certain: its quality uncertainty counts in full.
    router = router_for([model(i, quality=q) for i, q in enumerate((0.8, 0.7))], "ucb")
    request = RouteRequest(prompt="Explain tides.", mode="quality")
    for _ in range(20):
        d = router.decide(request)
        router.record(
            d, Outcome(model=d.model, success=True, latency_s=1.0, ttft_s=0.3, completion_tokens=40)
        )

    def bonus(decision: Decision) -> dict[str, float]:
        return {c.model: c.exploration for c in decision.candidates}

    closed = bonus(router.decide(request))
    router.shadow_gate = lambda: True
    opened = bonus(router.decide(request))
    router.shadow_gate = None
    assert bonus(router.decide(request)) == closed  # nothing stays behind once the gate closes
    assert set(opened) == set(closed) == {"p0/m0", "p1/m1"}
    assert all(opened[m] > closed[m] + 0.05 for m in closed)


def test_router_with_the_shadow_gate_open_logs_the_answers_true_propensity() -> None:
    # While shadows are allowed the best-scoring model answers whatever a random policy drew:
    # its propensity is 1 (replay divides by it), and tied models are no exploration.
    router = router_for([model(i, quality=q) for i, q in enumerate((0.9, 0.7, 0.5))], "softmax", seed=3)
    router.shadow_gate = lambda: True
    request = RouteRequest(prompt="Explain tides.", mode="quality")
    decisions = [router.decide(request) for _ in range(200)]
    assert {d.model for d in decisions} == {"p0/m0"}
    assert {d.propensity for d in decisions} == {1.0}
    assert any(d.shadow is not None for d in decisions)
    twins = router_for([model(i) for i in range(3)])
    twins.shadow_gate = lambda: True
    assert all(twins.decide(request).shadow is None for _ in range(20))
