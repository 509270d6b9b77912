"""A cheap profile of a request: task class, token estimate, length bucket, learner cell.

Cheap enough for the decision path: the words of the prompt's last user turn (its head and tail,
``scan_chars`` in all) are collected once into a set and intersected with each task class's
keywords; the few regexes a class may add run over the same lower-cased text. The rules live
in settings (``profile.tasks``).

The learner keeps one row of estimates per *cell*: the task class (``cells="task"``), or the task
class and the length bucket together (``cells="task_and_length"``: prompts of one class but of
very different lengths, such as a one-line request and a long document with a question, often
suit different models).
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

__all__ = ["CellMode", "Profile", "Profiler", "TaskRules", "estimate_tokens"]

CellMode = Literal["task", "task_and_length"]

CHARS_PER_TOKEN = 4.0
_WORD = re.compile(r"[a-z0-9+#]+(?:[;'][a-z]+)?")


def estimate_tokens(chars: int) -> int:
    """About four characters a token for English text, as OpenAI's guidance says."""
    return max(1, int(chars / CHARS_PER_TOKEN + 0.999))


@dataclass(frozen=True)
class TaskRules:
    keywords: Sequence[str] = ()
    patterns: Sequence[str] = ()
    words: frozenset[str] = field(init=False)
    phrases: tuple[str, ...] = field(init=False)
    regexes: tuple[re.Pattern[str], ...] = field(init=False)

    def __post_init__(self) -> None:
        keys = [k.lower() for k in self.keywords]
        object.__setattr__(self, "words", frozenset(k for k in keys if _WORD.fullmatch(k)))
        object.__setattr__(self, "phrases", tuple(k for k in keys if not _WORD.fullmatch(k)))
        object.__setattr__(self, "regexes", tuple(re.compile(p) for p in self.patterns))


@dataclass(frozen=True, slots=True)
class Profile:
    """``task``/``task_index``: the task class; ``cell``/``cell_name``: the learner's row."""

    task: str
    task_index: int
    prompt_tokens: int
    bucket: int
    expected_output_tokens: int
    cell: int
    cell_name: str

    @property
    def key(self) -> str:
        return f"{self.task}:{self.bucket}"


class Profiler:
    """Most keyword hits wins (ties go to the class listed first); no hit: the default task.

    ``cells`` names the learner's rows: the task classes, or every (task class, length bucket)
    pair, named ``"code/1"`` (bucket 1 of ``code``), task-major.
    """

    def __init__(
        self,
        tasks: Mapping[str, TaskRules],
        default_task: str = "general",
        length_buckets: Sequence[int] = (256, 2048),
        expected_output_tokens: Mapping[str, int] | None = None,
        scan_chars: int = 2000,
        cells: CellMode = "task",
    ) -> None:
        if cells not in get_args(CellMode):
            raise ValueError(f"cells must be one of {get_args(CellMode)}, not {cells!r}")
        self.tasks: tuple[str, ...] = (*tasks, default_task)
        rules = list(tasks.values())
        # Flattened once, so classifying is a set intersection and a few substring checks.
        self._word_tasks: dict[str, list[int]] = {}
        for index, rule in enumerate(rules):
            for word in rule.words:
                self._word_tasks.setdefault(word, []).append(index)
        self._keywords = frozenset(self._word_tasks)
        self._phrases = [(phrase, i) for i, rule in enumerate(rules) for phrase in rule.phrases]
        self._regexes = [(regex, i) for i, rule in enumerate(rules) for regex in rule.regexes]
        self._n_rules = len(rules)
        self._default = len(self.tasks) - 1
        self._buckets = list(length_buckets)
        out = expected_output_tokens or {}
        fallback = out.get(default_task, 300)
        self._expected_out = [int(out.get(task, fallback)) for task in self.tasks]
        self._half = scan_chars // 2
        # Cells per task: 1, or one per length bucket; cell = task * per_task + bucket.
        self._per_task = len(self._buckets) + 1 if cells == "task_and_length" else 1
        self.cells: tuple[str, ...] = (
            tuple(f"{task}/{b}" for task in self.tasks for b in range(self._per_task))
            if cells == "task_and_length"
            else self.tasks
        )

    def classify(self, text: str) -> int:
        if len(text) > 2 * self._half:
            text = f"{text[: self._half]} {text[-self._half :]}"
        text = text.lower()
        hits = [0] * self._n_rules
        for word in self._keywords.intersection(_WORD.findall(text)):
            for index in self._word_tasks[word]:
                hits[index] += 1
        for phrase, index in self._phrases:
            if phrase in text:
                hits[index] += 1
        for regex, index in self._regexes:
            if regex.search(text):
                hits[index] += 1
        best = max(hits, default=0)
        return hits.index(best) if best > 0 else self._default

    def profile(self, text: str, chars: int | None = None, max_tokens: int | None = None) -> Profile:
        """``text`` is scanned for the task (the last user turn); ``chars`` counts the whole prompt."""
        task = self.classify(text)
        tokens = estimate_tokens(len(text) if chars is None else chars)
        expected = self._expected_out[task]
        if max_tokens is not None:
            expected = min(expected, max_tokens)
        bucket = bisect_right(self._buckets, tokens)
        cell = task * self._per_task + (bucket if self._per_task > 1 else 0)
        return Profile(self.tasks[task], task, tokens, bucket, expected, cell, self.cells[cell])
