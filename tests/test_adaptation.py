"""Adaptation through the real service: a router, a simulated endpoint over loopback, HTTP.

Four models on one provider whose real speed is 10x off the catalogue's priors (faster, or
slower), default settings but the policy. The fastest model slows down fivefold, then recovers:
its share of ``auto:speed`` traffic must fall below 20% within 50 requests of the slowdown, and
after the recovery it must win back at least half its former share within 300 requests.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from adaptive_router import Catalogue, Model

from .service_fixtures import Stack, recover, service_stack, slow

IDS = ("edge/a", "edge/b", "edge/c", "edge/d")
FAST = IDS[0]
# What the endpoint really does (seconds): "a" about 12 ms an answer, the others about 35 ms, so
# that a loaded machine's own delays (a few ms) cannot blur which is fastest; "a" slowed 5x is
# the slowest.
TRUTH = {
    "edge/a": (0.008, 0.0002),
    "edge/b": (0.022, 0.0006),
    "edge/c": (0.025, 0.0005),
    "edge/d": (0.028, 0.0004),
}
ANSWER_TOKENS = 20
SLOW_AT, RECOVER_AT, END = 150, 300, 600


def catalogue(prior_over_truth: float) -> Catalogue:
    """The four models with equal public priors: ``prior_over_truth`` times the typical truth."""
    ttft, tpot = 0.022 * prior_over_truth, 0.0005 * prior_over_truth
    return Catalogue(
        [Model(i, 1e-7, 2e-7, 32_000, ttft_s=ttft, tpot_s=tpot, quality=0.6) for i in IDS], source="test"
    )


@pytest.fixture
def edge(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    policy, prior_over_truth = request.param
    sim = {
        "time_scale": 1.0,
        "models": {
            i: {"ttft_s": t, "tpot_s": p, "ttft_sigma": 0.15, "tpot_sigma": 0.15, "tail_prob": 0.0}
            for i, (t, p) in TRUTH.items()
        },
        "min_chunk_interval_s": 0.0,
    }
    events = [slow(FAST, 5.0, at_request=SLOW_AT), recover(FAST, at_request=RECOVER_AT)]
    with service_stack(
        monkeypatch,
        events=events,
        sim=sim,
        providers=lambda url: {"edge": {"base_url": url, "models": ["edge/*"]}},
        catalogue=catalogue(prior_over_truth),
        exploration={"policy": policy, "seed": 3},
    ) as stack:
        yield stack


def _share(chosen: list[str], start: int, stop: int) -> float:
    window = chosen[start:stop]
    return sum(1 for m in window if m == FAST) / len(window)


def _route(stack: Stack, n: int) -> list[str]:
    chosen = []
    body: dict[str, Any] = {
        "model": "auto:speed",
        "max_tokens": ANSWER_TOKENS,
        "messages": [{"role": "user", "content": "Say something short."}],
    }
    for _ in range(n):
        answer = stack.chat(body)
        assert answer.status_code == 200, answer.text
        chosen.append(answer.json()["model"])
    return chosen


@pytest.mark.parametrize(
    "edge",
    # Each policy and each direction once (16 s a pair through HTTP); benchmarks/learning.py
    # --service-only runs every pair, greedy and softmax too.
    [("ucb", 10.0), ("thompson", 0.1)],
    indirect=True,
    ids=["ucb-endpoint-10x-faster", "thompson-10x-slower"],
)
def test_speed_traffic_leaves_a_slowed_model_and_returns_after_it_recovers(edge: Stack) -> None:
    chosen = _route(edge, END)
    before = _share(chosen, SLOW_AT - 50, SLOW_AT)
    assert before >= 0.5, f"the fastest model should carry speed traffic first, had {before:.0%}"
    # Below 20% within 50 requests of the slowdown (the last 20 of those 50).
    assert _share(chosen, SLOW_AT + 30, SLOW_AT + 50) < 0.2
    # Half its former share back within 300 requests of the recovery: some 20 requests in that
    # stretch give it at least half of what it had.
    regained = [k for k in range(RECOVER_AT, END - 20) if _share(chosen, k, k + 20) >= 0.5 * before]
    assert regained and regained[0] - RECOVER_AT <= 300 - 20, (
        f"share after recovery: {_share(chosen, RECOVER_AT, END):.0%}"
    )
