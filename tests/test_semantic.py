"""The semantic profile (static MiniLM), its cells, the hierarchical quality estimate, fast paths."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adaptive_router import load_settings
from adaptive_router.core import (
    MAX_TOKENS,
    Catalogue,
    CellLevels,
    Learner,
    Model,
    Router,
    RouteRequest,
    SemanticCells,
    StaticEmbedder,
    shrunk_quality,
    wordpiece_basic_tokens,
)
from adaptive_router.simulator import SimClock

TEXTS = [
    "Write a Python function that reverses a linked list.",
    "Which gas do plants absorb from the air? (A) oxygen (B) carbon dioxide",
    "Translate 'good morning' into French, please.",
    "Café crème, naïve résumé: ÀÉÎ! 東京は日本の首都です。",
]


@pytest.fixture(scope="module")
def embedder() -> StaticEmbedder:
    return StaticEmbedder.load()


def test_basic_tokens_follow_bert_uncased() -> None:
    assert wordpiece_basic_tokens("Hello, World!  it's_ok") == [
        "hello",
        ",",
        "world",
        "!",
        "it",
        "'",
        "s",
        "_",
        "ok",
    ]
    assert wordpiece_basic_tokens("Café NAÏVE") == ["cafe", "naive"]
    assert wordpiece_basic_tokens("東京x") == ["東", "京", "x"]
    assert wordpiece_basic_tokens("a\x01b") == ["ab"]  # control characters are dropped, not spaces


def test_wordpiece_splits_unknown_words_into_pieces(embedder: StaticEmbedder) -> None:
    inverse = {i: t for t, i in embedder.vocab.items()}
    assert [inverse[i] for i in embedder.token_ids("unaffable")] == [
        "una",
        "##ffa",
        "##ble",
    ]  # greedy longest match, as BERT
    assert [inverse[i] for i in embedder.token_ids("x" * 101)] == ["[UNK]"]


def test_the_model_reads_at_most_its_window(embedder: StaticEmbedder) -> None:
    long = "routing models by latency cost and quality " * 200
    ids = embedder.model_ids(long)
    assert len(ids) == MAX_TOKENS
    assert ids == embedder.token_ids(long)[:MAX_TOKENS]
    assert np.array_equal(embedder.embed(long), embedder.embed(long + " and a different tail"))


def test_embeddings_are_unit_length_and_close_for_close_texts(embedder: StaticEmbedder) -> None:
    vectors = [embedder.embed(t) for t in TEXTS]
    assert all(abs(float(np.linalg.norm(v)) - 1.0) < 1e-5 for v in vectors)
    assert not embedder.embed("   ").any()
    code = embedder.embed("Write a Python function that sorts a list of numbers.")
    assert float(code @ vectors[0]) > float(code @ vectors[2])


def test_cells_are_in_range_and_stable(embedder: StaticEmbedder) -> None:
    cells = SemanticCells(embedder.dims, 4, embedder.centre)
    seen = [cells.cell(embedder.embed(t)) for t in TEXTS]
    assert all(0 <= c < 16 for c in seen)
    assert seen == [cells.cell(embedder.embed(t)) for t in TEXTS]
    assert SemanticCells(embedder.dims, 0).cell(embedder.embed(TEXTS[0])) == 0
    with pytest.raises(ValueError):
        SemanticCells(embedder.dims, 17)


_CHILD = """
import json, sys
from adaptive_router.core import SemanticCells, StaticEmbedder
e = StaticEmbedder.load()
cells = SemanticCells(e.dims, 5, e.centre)
texts = json.loads(sys.stdin.read())
print(json.dumps([[e.embed(t).tobytes().hex(), cells.cell(e.embed(t))] for t in texts]))
"""


def test_embedding_and_cell_are_identical_across_processes() -> None:
    runs = [
        subprocess.run(
            [sys.executable, "-c", _CHILD],
            input=json.dumps(TEXTS),
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
            env={"PYTHONHASHSEED": str(seed), "PATH": "", **_pythonpath()},
        ).stdout
        for seed in (1, 2)
    ]
    assert runs[0] == runs[1]
    assert len(json.loads(runs[0])) == len(TEXTS)


def _pythonpath() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k in ("PYTHONPATH", "HOME", "OPENBLAS_CORETYPE")}


# --- the hierarchical quality estimate ------------------------------------------------------------

LEVELS = CellLevels([0, 0, 0, 1, 1, 1], 2)  # two task classes of three fine cells each


def test_a_cell_without_evidence_answers_with_its_task_class() -> None:
    s1, w = np.zeros((6, 2)), np.zeros((6, 2))
    s1[3:5, 0], w[3:5, 0] = 18.0, 20.0  # task 1, model 0: 90% over cells 3 and 4
    q, var = shrunk_quality(s1, w, np.full(2, 0.5), LEVELS, 5.0)
    assert q[5, 0] > 0.8  # cell 5 saw nothing: it borrows its class's 90%
    assert q[0, 0] == pytest.approx((5 * 0.5 + 36) / (5 + 40))  # task 0 saw nothing: the global estimate
    assert q[5, 0] > q[0, 0]
    assert q[:, 1] == pytest.approx(0.5)  # model 1: no evidence anywhere, the prior
    assert var[5, 0] < var[0, 1]


@st.composite
def fine_sums(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    w = np.array(draw(st.lists(st.floats(0.0, 50.0), min_size=12, max_size=12))).reshape(6, 2)
    share = np.array(draw(st.lists(st.floats(0.0, 1.0), min_size=12, max_size=12))).reshape(6, 2)
    return share * w, w


@settings(max_examples=200, deadline=None)
@given(fine_sums(), st.floats(0.05, 0.95), st.floats(0.5, 50.0))
def test_shrunk_quality_stays_a_probability_with_positive_variance(
    sums: tuple[np.ndarray, np.ndarray], prior: float, k: float
) -> None:
    s1, w = sums
    q, var = shrunk_quality(s1, w, np.full(2, prior), LEVELS, k)
    assert np.all((q >= -1e-12) & (q <= 1 + 1e-12))
    assert np.all(var > 0)
    # Between the cell's own mean and what it borrows: never outside both.
    own = np.where(w > 0, s1 / np.maximum(w, 1e-300), q)
    assert np.all(q <= np.maximum(own, 1.0) + 1e-9)


@settings(max_examples=100, deadline=None)
@given(fine_sums(), st.permutations(range(3)))
def test_the_order_of_cells_within_a_class_does_not_matter(
    sums: tuple[np.ndarray, np.ndarray], order: list[int]
) -> None:
    s1, w = sums
    perm = np.array([*order, *(3 + np.array(order))])
    q, var = shrunk_quality(s1, w, np.full(2, 0.5), LEVELS, 5.0)
    qp, varp = shrunk_quality(s1[perm], w[perm], np.full(2, 0.5), LEVELS, 5.0)
    assert np.allclose(q[perm], qp) and np.allclose(var[perm], varp)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 1), st.floats(0, 1), st.booleans()), max_size=60))
def test_replicas_merge_by_adding_fine_cell_sums(events: list[tuple[int, int, float, bool]]) -> None:
    """Two replicas that each saw part of the feedback, merged, estimate what one that saw it all does."""
    names = [f"t{t}/s{c}" for t in range(2) for c in range(3)]

    def learner() -> Learner:
        return Learner(
            ["a", "b"], names, np.ones(2), np.full(2, 0.01), np.full(2, 0.5), cell_levels=LEVELS, t0=0.0
        )

    one, left, right = learner(), learner(), learner()
    for i, (cell, model, score, to_left) in enumerate(events):
        one.feedback(model, cell, float(i), score)
        (left if to_left else right).feedback(model, cell, float(i), score)
    left.merge(right.local_state())
    a, b = one.estimates(100.0), left.estimates(100.0)
    assert np.allclose(a.quality, b.quality) and np.allclose(a.quality_var, b.quality_var)


# --- the router with semantic cells and fast paths ---------------------------------------------------


def _models() -> list[Model]:
    return [
        Model(
            id=f"p/m{i}", price_prompt=1e-6 * (i + 1), price_completion=2e-6 * (i + 1), context_length=32_000
        )
        for i in range(4)
    ]


def test_router_with_semantic_cells_names_its_cells_under_task_classes() -> None:
    settings_ = load_settings(profile={"cells": "task_and_semantic", "semantic_bits": 2})
    router = Router.from_settings(settings_, Catalogue(_models()), clock=SimClock())
    profile = router.profile(RouteRequest(prompt=TEXTS[0]))
    assert profile.task == "code" and profile.cell_name.startswith("code/s")
    assert router.learner.cell_levels is not None
    assert len(router.learner.tasks) == 4 * len(router.profiler.tasks)
    decision = router.decide(RouteRequest(prompt=TEXTS[1]))
    assert decision.model in router.catalogue.ids


def test_fast_path_sends_a_match_to_its_model_and_mode_unless_the_client_chose() -> None:
    rules = [
        {"name": "legal", "keywords": ["contract"], "model": "p/m3"},
        {"name": "chat", "patterns": [r"^hi\b"], "mode": "speed", "allow": ["p/m0", "p/m1"]},
    ]
    settings_ = load_settings(profile={"fast_path": rules}, exploration={"policy": "greedy"})
    router = Router.from_settings(settings_, Catalogue(_models()), clock=SimClock())
    legal = router.decide(RouteRequest(prompt="Review this contract clause"))
    assert legal.model == "p/m3" and legal.to_dict()["profile"]["fast_path"] == "legal"
    assert "fast_path" not in router.decide(RouteRequest(prompt="Tell me a story")).to_dict()["profile"]
    assert router.decide(RouteRequest(prompt="Review this contract", model="p/m1")).model == "p/m1"
    chat = router.decide(RouteRequest(prompt="hi there"))
    assert chat.mode == "speed" and chat.model in ("p/m0", "p/m1")
    assert router.decide(RouteRequest(prompt="hi there", mode="quality")).mode == "quality"


def test_fast_path_rules_are_validated() -> None:
    from adaptive_router import ConfigError

    with pytest.raises((ValueError, ConfigError)):
        load_settings(profile={"fast_path": [{"keywords": ["x"]}]})
    with pytest.raises((ValueError, ConfigError)):
        load_settings(profile={"fast_path": [{"model": "p/m1"}]})
