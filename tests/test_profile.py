from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adaptive_router import ConfigError, RequestError, load_settings
from adaptive_router._settings import ProfileSettings
from adaptive_router.core import Profiler, Router, RouteRequest, TaskRules, estimate_tokens

# Words that are no task's keyword, to pad a prompt to any length.
FILLER = "lorem ipsum dolor sit amet "


def _default_profiler(**changes: Any) -> Profiler:
    """The profiler the router builds from the default ``profile`` settings (with ``changes``),
    with keyword cells unless ``changes`` name others (semantic cells: test_semantic.py)."""
    prof = ProfileSettings(**{"cells": "task", **changes})
    rules = {name: TaskRules(rule.keywords, rule.patterns) for name, rule in prof.tasks.items()}
    return Profiler(
        rules,
        prof.default_task,
        prof.length_buckets,
        prof.expected_output_tokens,
        prof.scan_chars,
        prof.cells,
    )


def _toy(order: tuple[str, ...] = ("a", "b")) -> Profiler:
    rules = {"a": TaskRules(["alpha", "beta"]), "b": TaskRules(["gamma", "delta"])}
    return Profiler({name: rules[name] for name in order}, default_task="chat")


@pytest.fixture(scope="module")
def profiler() -> Profiler:
    return _default_profiler()


@pytest.fixture
def router(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Router:
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("ROUTER_"):
            monkeypatch.delenv(name)
    return Router.from_settings(load_settings())


# --- task classes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "task"),
    [
        ("Write a Python function that parses a CSV file", "code"),
        ("Why does this raise an exception?\n```\nx = [1, 2][5]\n```", "code"),
        ("I got this stack trace from my server, what is wrong?", "code"),
        ("What is 17 * 23 + 4?", "math"),
        ("Solve the equation for x and prove it is unique", "math"),
        ("Translate into French: the meeting is moved to Thursday", "translation"),
        ("Please translate this letter for my grandmother", "translation"),
        ("Summarize this article in one sentence", "summarisation"),
        ("tl;dr of the thread below, please", "summarisation"),
        ("Tell me a short story about a lighthouse keeper", "general"),
        ("Explain the difference between TCP and UDP.", "general"),
        ("", "general"),
    ],
)
def test_profiler_task_for_typical_prompts(profiler: Profiler, prompt: str, task: str) -> None:
    profile = profiler.profile(prompt)
    assert profile.task == task
    assert profiler.tasks[profile.task_index] == task


def test_profiler_task_names_end_with_default(profiler: Profiler) -> None:
    assert profiler.tasks == ("code", "math", "translation", "summarisation", "general")


def test_profiler_most_hits_wins() -> None:
    toy = _toy()
    assert toy.profile("alpha gamma delta").task == "b"
    assert toy.profile("alpha beta gamma").task == "a"
    assert toy.profile("nothing relevant here").task == "chat"


def test_profiler_tie_goes_to_the_first_class() -> None:
    assert _toy(("a", "b")).profile("gamma then alpha").task == "a"
    assert _toy(("b", "a")).profile("gamma then alpha").task == "b"
    assert _toy(("a", "b")).profile("beta gamma").task == "a"


_WORD_PATTERN = re.compile(r"[a-z0-9+#]+(?:[;'][a-z]+)?")  # what a keyword word matches, as documented
_CODE_WORDS = {"c++", "c#", "python", "code", "don't"}
_POEM_WORDS = {"poem", "it's", "a;b"}


@given(
    st.lists(
        st.sampled_from(
            ["code", "C++", "c#", "Python", "don't", "it's", "a;b", "poem", "x", "+", "#", "'", ";", " "]
        )
        | st.sampled_from(["\n", ",", "-", "é", "3+4", "DON'T", "poems", "'code", "python;", "'poem'"])
        | st.just("a;b;c"),
        max_size=30,
    )
)
def test_profiler_counts_the_keywords_the_word_pattern_finds(parts: list[str]) -> None:
    """Whatever the punctuation, apostrophes or non-ASCII around them, a keyword counts exactly
    when the word pattern finds it in the lower-cased text."""
    tasks = {"code": TaskRules(keywords=sorted(_CODE_WORDS)), "poem": TaskRules(keywords=sorted(_POEM_WORDS))}
    text = "".join(parts)
    words = set(_WORD_PATTERN.findall(text.lower()))
    code, poem = len(words & _CODE_WORDS), len(words & _POEM_WORDS)
    expected = "general" if code == poem == 0 else ("code" if code >= poem else "poem")
    profiler = Profiler(tasks)
    assert profiler.tasks[profiler.classify(text)] == expected


def test_profiler_repeated_keyword_counts_once() -> None:
    # Hits count distinct keywords: repeating one word must not outvote two different ones.
    assert _toy().profile("alpha alpha alpha alpha gamma delta").task == "b"


def test_profiler_is_case_insensitive(profiler: Profiler) -> None:
    assert profiler.profile("WRITE A PYTHON SCRIPT").task == "code"
    assert profiler.profile("TRANSLATE Into French: Good Morning").task == "translation"
    mixed_rules = Profiler({"greet": TaskRules(["Hello", "Good Morning"])})
    assert mixed_rules.profile("HELLO there").task == "greet"
    assert mixed_rules.profile("and GOOD MORNING to you").task == "greet"


def test_profiler_keywords_match_whole_words(profiler: Profiler) -> None:
    # "class" is a code keyword; "classic" and "classical" must not count as it.
    assert profiler.profile("Recommend some classical music and a classic film").task == "general"


def test_profiler_scans_only_head_and_tail_of_long_text(profiler: Profiler) -> None:
    body = FILLER * 2000  # 54,000 characters
    assert len(body) > 50_000
    assert profiler.profile(body).task == "general"
    middle = body[:25_000] + " translate " + body[25_000:]
    assert profiler.profile(middle).task == "general"
    assert profiler.profile(body + " translate").task == "translation"
    assert profiler.profile("translate " + body).task == "translation"


def test_profiler_scan_chars_setting_widens_the_window() -> None:
    text = FILLER * 60 + " translate " + FILLER * 2000  # keyword ~1,600 characters in
    assert _default_profiler().profile(text).task == "general"  # default: 1,000 from each end
    assert _default_profiler(scan_chars=4000).profile(text).task == "translation"


def test_profiler_long_text_still_counts_every_character(profiler: Profiler) -> None:
    body = FILLER * 2000
    assert profiler.profile(body).prompt_tokens == estimate_tokens(len(body))


# --- tokens, buckets, expected output ---------------------------------------------------------


@pytest.mark.parametrize(
    ("chars", "tokens"), [(0, 1), (1, 1), (4, 1), (5, 2), (400, 100), (401, 101), (40_000, 10_000)]
)
def test_estimate_tokens_about_four_chars_each(chars: int, tokens: int) -> None:
    assert estimate_tokens(chars) == tokens


def test_profiler_token_estimate_from_text_or_given_chars(profiler: Profiler) -> None:
    assert profiler.profile("x" * 4000).prompt_tokens == 1000
    assert profiler.profile("hello", chars=40_000).prompt_tokens == 10_000


@pytest.mark.parametrize(
    ("tokens", "bucket"), [(1, 0), (100, 0), (255, 0), (256, 1), (1000, 1), (2047, 1), (2048, 2), (50_000, 2)]
)
def test_profiler_length_buckets(profiler: Profiler, tokens: int, bucket: int) -> None:
    # Default buckets [256, 2048]: a bucket starts at its edge (256 tokens is the second bucket).
    profile = profiler.profile("hello", chars=tokens * 4)
    assert profile.prompt_tokens == tokens
    assert profile.bucket == bucket
    assert profile.key == f"general:{bucket}"


def test_profiler_length_buckets_from_settings() -> None:
    custom = _default_profiler(length_buckets=[10, 100, 1000])
    assert [custom.profile("hi", chars=t * 4).bucket for t in (5, 50, 500, 5000)] == [0, 1, 2, 3]


def test_profiler_expected_output_tokens_per_task(profiler: Profiler) -> None:
    assert profiler.profile("write python code").expected_output_tokens == 500
    assert profiler.profile("translate this").expected_output_tokens == 200
    assert profiler.profile("tell me a story").expected_output_tokens == 300


def test_profiler_expected_output_tokens_capped_by_max_tokens(profiler: Profiler) -> None:
    assert profiler.profile("write python code", max_tokens=50).expected_output_tokens == 50
    assert profiler.profile("write python code", max_tokens=5000).expected_output_tokens == 500
    assert profiler.profile("tell me a story", max_tokens=1).expected_output_tokens == 1


def test_profiler_task_without_expected_output_uses_default_tasks() -> None:
    custom = Profiler({"poem": TaskRules(["poem"])}, expected_output_tokens={"general": 123})
    assert custom.profile("write a poem").expected_output_tokens == 123


# --- learner cells ----------------------------------------------------------------------------

TASKS = ("code", "math", "translation", "summarisation", "general")


def test_keyword_profile_cells_are_the_tasks(profiler: Profiler) -> None:
    assert ProfileSettings().cells == "task_and_semantic"  # the default; the keyword profile is opt-in
    assert profiler.cells == profiler.tasks
    for prompt in ("write python code", "what is 2 + 3", "tell me a story"):
        for tokens in (10, 1000, 10_000):  # length does not matter to the cell
            profile = profiler.profile(prompt, chars=tokens * 4)
            assert (profile.cell, profile.cell_name) == (profile.task_index, profile.task)


def test_profiler_task_and_length_cells_are_named_task_major() -> None:
    cells = _default_profiler(cells="task_and_length").cells
    assert cells == tuple(f"{task}/{bucket}" for task in TASKS for bucket in (0, 1, 2))
    custom = _default_profiler(cells="task_and_length", length_buckets=[100])
    assert custom.cells[:4] == ("code/0", "code/1", "math/0", "math/1") and len(custom.cells) == 10


@pytest.mark.parametrize(
    ("prompt", "tokens", "cell_name"),
    [
        ("write python code", 20, "code/0"),
        ("write python code", 500, "code/1"),
        ("write python code", 5000, "code/2"),
        ("tell me a story", 255, "general/0"),
        ("tell me a story", 256, "general/1"),
        ("summarize this", 2048, "summarisation/2"),
    ],
)
def test_profiler_task_and_length_cell_follows_task_and_bucket(
    prompt: str, tokens: int, cell_name: str
) -> None:
    profiler = _default_profiler(cells="task_and_length")
    profile = profiler.profile(prompt, chars=tokens * 4)
    assert profile.cell_name == cell_name
    assert profiler.cells[profile.cell] == cell_name
    assert profile.task == cell_name.split("/")[0]
    assert profiler.tasks[profile.task_index] == profile.task  # the task class is kept as it was


@given(
    words=st.lists(st.sampled_from(["python", "solve", "translate", "summary", "sea", "2 + 2"]), max_size=4),
    tokens=st.integers(1, 100_000),
)
def test_profiler_cell_is_one_row_per_task_and_bucket(words: list[str], tokens: int) -> None:
    by_task = _default_profiler()
    by_length = _default_profiler(cells="task_and_length", length_buckets=[64, 256, 1024])
    text = " ".join(words)
    a, b = by_task.profile(text, chars=tokens * 4), by_length.profile(text, chars=tokens * 4)
    assert (a.task, a.task_index) == (b.task, b.task_index)
    assert a.cell == a.task_index and by_task.cells[a.cell] == a.cell_name
    assert b.cell == b.task_index * 4 + b.bucket  # four buckets per task: the mapping is one-to-one
    assert by_length.cells[b.cell] == b.cell_name == f"{b.task}/{b.bucket}"


def test_profiler_rejects_an_unknown_cells_mode() -> None:
    with pytest.raises(ValueError, match="cells"):
        Profiler({"a": TaskRules(["alpha"])}, cells="dataset")  # type: ignore[arg-type]


def test_profile_settings_cells_from_file_or_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ROUTER_PROFILE__CELLS", raising=False)
    (tmp_path / "settings.yaml").write_text("profile:\n  cells: task_and_length\n")
    assert load_settings("settings.yaml").profile.cells == "task_and_length"
    monkeypatch.setenv("ROUTER_PROFILE__CELLS", "task")
    assert load_settings("settings.yaml").profile.cells == "task"  # the environment wins
    with pytest.raises(ConfigError) as err:
        load_settings(profile={"cells": "dataset"})
    assert err.value.key == "profile.cells"


# --- Router.profile on OpenAI messages --------------------------------------------------------


def _messages(first: str, last_parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": first},
        {"role": "assistant", "content": "Bonjour"},
        {"role": "user", "content": last_parts},
    ]


def test_router_profile_task_from_last_user_turn(router: Router) -> None:
    parts = [{"type": "text", "text": "Now write a Python function for it"}]
    assert (
        router.profile(RouteRequest(messages=_messages("Translate into French: hello", parts))).task == "code"
    )
    swapped = [{"type": "text", "text": "Translate into French: hello"}]
    assert (
        router.profile(RouteRequest(messages=_messages("Write a Python function", swapped))).task
        == "translation"
    )


def test_router_profile_ignores_assistant_turns_for_task(router: Router) -> None:
    messages = [
        {"role": "user", "content": "Tell me a story"},
        {"role": "assistant", "content": "Here is python code: def f(): pass"},
    ]
    assert router.profile(RouteRequest(messages=messages)).task == "general"


def test_router_profile_counts_text_parts_of_all_turns_not_images(router: Router) -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 40_000}}
    parts = [
        {"type": "text", "text": "Write a Python function"},
        image,
        {"type": "text", "text": "for my data"},
    ]
    messages = _messages("Translate into French: hello", parts)
    text_chars = sum(len(m["content"]) for m in messages[:3]) + sum(
        len(p["text"]) for p in parts if "text" in p
    )
    assert text_chars % 4 == 1  # so the separator between two text parts, if counted, changes nothing
    profile = router.profile(RouteRequest(messages=messages))
    assert profile.prompt_tokens == estimate_tokens(text_chars)
    assert profile.task == "code"


def test_router_profile_messages_and_prompt_agree(router: Router) -> None:
    prompt = "Summarize the key points of this memo"
    by_prompt = router.profile(RouteRequest(prompt=prompt, max_tokens=64))
    by_messages = router.profile(RouteRequest(messages=[{"role": "user", "content": prompt}], max_tokens=64))
    assert by_prompt == by_messages
    assert by_prompt.task == "summarisation"
    assert by_prompt.expected_output_tokens == 64


def test_router_profile_needs_messages_or_prompt(router: Router) -> None:
    with pytest.raises(RequestError) as err:
        router.profile(RouteRequest())
    assert err.value.field == "messages"
