"""Merging learners that started at different times (replicas never share a start time).

Decayed sums are stored relative to a reference time ``t0``; merging must bring one side to
the other's ``t0`` before adding. These tests start the replicas at different times, so a merge
that ignored the alignment (or a rebase that lost it) gives different estimates.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adaptive_router.core import DecayedSums, Learner

IDS = ["a/one", "b/two", "c/three"]
TASKS = ["general", "code"]
HALF_LIFE_S = 60.0


def make_learner(t0: float) -> Learner:
    return Learner(
        IDS,
        TASKS,
        np.array([0.5, 1.0, 2.0]),
        np.array([0.01, 0.02, 0.04]),
        np.array([0.5, 0.6, 0.7]),
        latency_half_life_s=HALF_LIFE_S,
        quality_half_life_s=600.0,
        surprise_forget=1.0,  # no forgetting: the whole stream and its halves stay comparable
        stale_after=0.0,
        t0=t0,
    )


def read(sums: DecayedSums, t: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    f = sums.factor(t)
    return sums.w * f, sums.s1 * f, sums.s2 * f


def test_decayed_sums_merge_brings_the_other_to_our_reference_time() -> None:
    early, late = DecayedSums((2,), HALF_LIFE_S, t0=0.0), DecayedSums((2,), HALF_LIFE_S, t0=120.0)
    early.add(0, 1.0, t=100.0)
    late.add(1, 3.0, t=150.0)
    early.merge(late)
    w, s1, _ = read(early, 160.0)
    # each observation decayed from its own time to 160 s: 60 s and 10 s at a 60 s half-life
    np.testing.assert_allclose(w, [0.5, 2 ** (-10 / 60)], rtol=1e-12)
    np.testing.assert_allclose(s1, [0.5, 3 * 2 ** (-10 / 60)], rtol=1e-12)


def test_decayed_sums_merge_is_symmetric_in_reference_time() -> None:
    a, b = DecayedSums((1,), HALF_LIFE_S, t0=0.0), DecayedSums((1,), HALF_LIFE_S, t0=500.0)
    a.add(0, 2.0, t=490.0)
    b.add(0, 4.0, t=510.0)
    ab, ba = a.copy(), b.copy()
    ab.merge(b)
    ba.merge(a)
    for x, y in zip(read(ab, 520.0), read(ba, 520.0), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-12)


def test_decayed_sums_merge_across_a_rebase_gap() -> None:
    """A replica idle for days (reference times far apart) still merges exactly."""
    gap = 400.0 * HALF_LIFE_S / math.log(2.0)  # an exponent of 400: past the rebase threshold
    old, new = DecayedSums((1,), HALF_LIFE_S, t0=0.0), DecayedSums((1,), HALF_LIFE_S, t0=gap)
    old.add(0, 1.0, t=gap - HALF_LIFE_S)  # observed one half-life before the new replica started
    new.add(0, 1.0, t=gap)
    old.merge(new)
    w, _, _ = read(old, gap)
    assert np.isfinite(w).all()
    np.testing.assert_allclose(w, [1.5], rtol=1e-9)


events = st.lists(
    st.tuples(
        st.floats(0.0, 600.0),  # time after the later replica started
        st.integers(0, 2),  # model
        st.integers(0, 1),  # task
        st.booleans(),  # success
        st.floats(0.01, 30.0),  # ttft
        st.floats(0.001, 0.2),  # tpot
        st.one_of(st.none(), st.floats(0.0, 1.0)),  # feedback
        st.booleans(),  # which replica saw it
    ),
    min_size=1,
    max_size=40,
)


def _feed(learner: Learner, stream: list[tuple], start: float) -> None:  # type: ignore[type-arg]
    for dt, model, task, success, ttft, tpot, score, _ in stream:
        learner.observe(model, task, start + dt, success, ttft, tpot)
        if score is not None:
            learner.feedback(model, task, start + dt, score)


@settings(max_examples=60, deadline=None)
@given(events, st.floats(1.0, 40_000.0), st.booleans())
def test_learners_started_at_different_times_merge_to_the_whole(
    stream: list[tuple],  # type: ignore[type-arg]
    later_start: float,
    merge_into_early: bool,
) -> None:
    """Replica L started at 0 s and replica R at ``later_start``; each saw part of the traffic
    (all of it after both started). Merged either way, they know what one learner that saw
    everything knows: the start times (and any rebase on the way) must not matter."""
    stream = sorted(stream, key=lambda e: e[0])
    whole, early, late = make_learner(0.0), make_learner(0.0), make_learner(later_start)
    _feed(whole, stream, later_start)
    _feed(early, [e for e in stream if e[7]], later_start)
    _feed(late, [e for e in stream if not e[7]], later_start)
    target, source = (early, late) if merge_into_early else (late, early)
    target.merge(source.state())
    at = later_start + 600.0
    merged, expected = target.refresh(at), whole.refresh(at)  # full rebuilds: exact functions of the sums
    for name, value in vars(expected).items():
        if name in ("seen_at", "observations"):  # each process's own exploration clock
            continue
        np.testing.assert_allclose(getattr(merged, name), value, rtol=1e-7, atol=1e-10, err_msg=name)


@pytest.mark.parametrize(
    "other",
    [DecayedSums((3,), HALF_LIFE_S), DecayedSums((2,), 2 * HALF_LIFE_S), DecayedSums((3,), 2 * HALF_LIFE_S)],
    ids=["shape", "half-life", "both"],
)
def test_decayed_sums_refuse_to_merge_another_shape_or_half_life(other: DecayedSums) -> None:
    with pytest.raises(ValueError, match="can only merge sums of the same shape and half-life"):
        DecayedSums((2,), HALF_LIFE_S).merge(other)
