"""Quality as a cell's difficulty plus a model's strength (``learning.cell_difficulty``)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adaptive_router.core import CellLevels, Learner, cell_baseline, shrunk_quality

PRIOR = np.full(2, 0.5)


def _levels(difficulty: bool = True) -> CellLevels:
    return CellLevels([0, 0, 0, 1, 1, 1], 2, difficulty)  # two task classes of three fine cells each


def test_a_model_tried_only_on_hard_prompts_is_not_judged_weak_on_easy_ones() -> None:
    """Model 0 answered everywhere (90% in the easy cell 0, 50% in the hard cell 1); model 1 only
    in the hard cell, and better there (60%). Pooled raw, model 1 looks worse than model 0 in the
    easy cell; read as difficulty plus strength, it is the better model there too."""
    s1, w = np.zeros((6, 2)), np.zeros((6, 2))
    s1[0, 0], w[0, 0] = 90.0, 100.0
    s1[1, 0], w[1, 0] = 50.0, 100.0
    s1[1, 1], w[1, 1] = 60.0, 100.0
    raw, _ = shrunk_quality(s1, w, PRIOR, _levels(False), 5.0, 20.0)
    assert raw[0, 1] < raw[0, 0]
    levels = _levels()
    levels.refit(s1, w, PRIOR, 5.0)
    q, var = shrunk_quality(s1, w, PRIOR, levels, 5.0, 20.0)
    assert q[0, 1] > q[0, 0] > 0.85
    assert q[1, 1] == pytest.approx(0.6, abs=0.02) and q[1, 0] == pytest.approx(0.5, abs=0.02)
    assert var[0, 1] > var[0, 0]  # model 1 was never measured in cell 0: more to learn there


def test_levels_that_read_difficulty_refuse_estimates_before_a_fit() -> None:
    with pytest.raises(ValueError, match="refit"):
        shrunk_quality(np.zeros((6, 2)), np.zeros((6, 2)), PRIOR, _levels(), 5.0)


def test_no_evidence_gives_the_prior() -> None:
    levels = _levels()
    prior = np.array([0.7, 0.4])
    levels.refit(np.zeros((6, 2)), np.zeros((6, 2)), prior, 5.0)
    q, _ = shrunk_quality(np.zeros((6, 2)), np.zeros((6, 2)), prior, levels, 5.0)
    assert np.allclose(q, prior)


@st.composite
def fine_sums(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    w = np.array(draw(st.lists(st.floats(0.0, 50.0), min_size=12, max_size=12))).reshape(6, 2)
    share = np.array(draw(st.lists(st.floats(0.0, 1.0), min_size=12, max_size=12))).reshape(6, 2)
    return share * w, w


@settings(max_examples=200, deadline=None)
@given(fine_sums(), st.floats(0.05, 0.95), st.floats(0.5, 50.0), st.one_of(st.none(), st.floats(1.0, 50.0)))
def test_estimates_stay_probabilities_with_positive_variance(
    sums: tuple[np.ndarray, np.ndarray], prior: float, k: float, k_cell: float | None
) -> None:
    s1, w = sums
    levels = _levels()
    levels.refit(s1, w, np.full(2, prior), k)
    q, var = shrunk_quality(s1, w, np.full(2, prior), levels, k, k_cell)
    assert np.all((q >= 0.0) & (q <= 1.0)) and np.all(np.isfinite(var)) and np.all(var > 0)


@settings(max_examples=100, deadline=None)
@given(fine_sums())
def test_one_column_reads_what_all_columns_read(sums: tuple[np.ndarray, np.ndarray]) -> None:
    """A refresh of one model's column (between full refreshes) gives that column of the full one."""
    s1, w = sums
    levels = _levels()
    levels.refit(s1, w, PRIOR, 5.0)
    q, var = shrunk_quality(s1, w, PRIOR, levels, 5.0)
    for m in range(2):
        qm, vm = shrunk_quality(s1[:, [m]], w[:, [m]], PRIOR[[m]], levels, 5.0)
        assert np.allclose(qm[:, 0], q[:, m]) and np.allclose(vm[:, 0], var[:, m])


NAMES = [f"t{t}/s{c}" for t in range(2) for c in range(3)]
Event = tuple[int, int, float]
events = st.lists(st.tuples(st.integers(0, 5), st.integers(0, 2), st.floats(0, 1)), max_size=40)


def _learner() -> Learner:
    return Learner(
        ["a", "b", "c"],
        NAMES,
        np.ones(3),
        np.full(3, 0.01),
        np.full(3, 0.5),
        cell_levels=_levels(),
        cell_prior_strength=20.0,
        t0=0.0,
    )


def _fed(*batches: list[Event]) -> Learner:
    """A learner fed each batch, the i-th event of a batch at time i."""
    learner = _learner()
    for batch in batches:
        for i, (cell, model, score) in enumerate(batch):
            learner.feedback(model, cell, float(i), score)
    return learner


@settings(max_examples=40, deadline=None)
@given(events, events, events)
def test_merging_replicas_is_associative_and_commutative(
    a: list[Event], b: list[Event], c: list[Event]
) -> None:
    """Three replicas' evidence merged in any order and grouping gives the same estimates, and the
    same as one learner that saw it all: the difficulty is refitted from the summed sums."""
    whole = _fed(a, b, c).estimates(500.0)
    for first, second, third in ((a, b, c), (c, a, b), (b, c, a)):
        left = _fed(first)
        inner = _fed(second)
        inner.merge(_fed(third).local_state())  # (second + third) first: another grouping
        left.merge(inner.local_state())
        est = left.estimates(500.0)
        assert np.allclose(est.quality, whole.quality) and np.allclose(est.quality_var, whole.quality_var)


_SCRIPT = """
import json, numpy as np
from adaptive_router.core import CellLevels, Learner
names = [f"t{t}/s{c}" for t in range(2) for c in range(3)]
learner = Learner(["a", "b", "c"], names, np.ones(3), np.full(3, 0.01), np.full(3, 0.5),
                  cell_levels=CellLevels([0, 0, 0, 1, 1, 1], 2, True), cell_prior_strength=20.0, t0=0.0)
rng = np.random.default_rng(7)
for i in range(300):
    learner.feedback(int(rng.integers(3)), int(rng.integers(6)), float(i), float(rng.random() < 0.6))
est = learner.estimates(400.0)
print(json.dumps([est.quality.tolist(), est.quality_var.tolist()]))
"""


def test_estimates_are_identical_across_processes() -> None:
    """Every replica computes the same difficulty and estimates from the same sums, bit for bit."""
    runs = [
        subprocess.run(
            [sys.executable, "-c", _SCRIPT], capture_output=True, text=True, check=True, timeout=120
        )
        for _ in range(2)
    ]
    assert runs[0].stdout == runs[1].stdout and json.loads(runs[0].stdout)[0]


def test_the_fit_is_the_same_whatever_the_models_order() -> None:
    rng = np.random.default_rng(3)
    w = rng.uniform(0, 30, (6, 4))
    s1 = w * rng.uniform(0, 1, (6, 4))
    prior = np.array([0.5, 0.6, 0.4, 0.5])
    perm = np.array([2, 0, 3, 1])
    a = cell_baseline(s1, w, prior, _levels(), 5.0)
    b = cell_baseline(s1[:, perm], w[:, perm], prior[perm], _levels(), 5.0)
    assert np.allclose(a.cell, b.cell) and a.prior_mean == pytest.approx(b.prior_mean)
