"""A cheap profile of a request: task class, token estimate, length bucket, learner cell.

Cheap enough for the decision path: the words of the prompt's last user turn (its head and tail,
``scan_chars`` in all) are collected once into a set and intersected with each task class's
keywords; the few regexes a class may add run over the same lower-cased text. The rules live
in settings (``profile.tasks``).

The learner keeps one row of estimates per *cell*: the task class (``cells="task"``), or the task
class and the length bucket together (``cells="task_and_length"``: prompts of one class but of
very different lengths, such as a one-line request and a long document with a question, often
suit different models), or the task class and a cell of the prompt's semantic embedding
(``cells="task_and_semantic"``, see :mod:`adaptive_router.semantic`): then ``levels`` says which
task class each cell belongs to, and quality estimates borrow strength from it.

*Fast-path rules* (seed B's keyword layer) are checked first, in order: the first whose keywords
or patterns match names a mode, an allow-list or a model for the request (``Profile.route``).
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, get_args

from ._hierarchy import CellLevels

if TYPE_CHECKING:
    from ._semantic import SemanticCells, StaticEmbedder

__all__ = ["CellMode", "FastRoute", "Profile", "Profiler", "TaskRules", "estimate_tokens"]

CellMode = Literal["task", "task_and_length", "task_and_semantic"]

CHARS_PER_TOKEN = 4.0
_WORD = re.compile(r"[a-z0-9+#]+(?:[;'][a-z]+)?")
# Every ASCII character a word cannot contain, as a space: ``_words``' fast path.
_NOT_WORD = str.maketrans({c: " " for c in map(chr, range(128)) if not re.fullmatch(r"[a-z0-9+#;']", c)})


def _words(text: str) -> list[str]:
    """``_WORD.findall(text)``. In ASCII text without ``'`` or ``;`` a word is exactly a run of
    ``[a-z0-9+#]``: one translate and a split, in C, where the regex engine steps through a
    long prompt a character at a time (4 us against 17 for 600 characters)."""
    if text.isascii() and "'" not in text and ";" not in text:
        return text.translate(_NOT_WORD).split()
    return _WORD.findall(text)


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


@dataclass(frozen=True)
class FastRoute:
    """A fast-path rule: text matching ``rules`` goes to ``mode``, ``allow`` and/or ``model``."""

    name: str
    rules: TaskRules
    mode: str | None = None
    allow: tuple[str, ...] = ()
    model: str | None = None

    def matches(self, text: str) -> bool:
        """``text`` is already lower-cased and cut to the scanned head and tail."""
        r = self.rules
        return (
            (bool(r.words) and not r.words.isdisjoint(_words(text)))
            or any(phrase in text for phrase in r.phrases)
            or any(regex.search(text) for regex in r.regexes)
        )


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
    route: FastRoute | None = None  # the fast-path rule that matched, if any

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
        *,
        semantic: tuple[StaticEmbedder, SemanticCells] | None = None,
        fast_path: Sequence[FastRoute] = (),
    ) -> None:
        if cells not in get_args(CellMode):
            raise ValueError(f"cells must be one of {get_args(CellMode)}, not {cells!r}")
        if (cells == "task_and_semantic") != (semantic is not None):
            raise ValueError("cells='task_and_semantic' needs a semantic embedder, and only it uses one")
        self.fast_path = tuple(fast_path)
        self.semantic = semantic
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
        # Cells per task: 1, one per length bucket or one per semantic cell; task-major.
        self._cell_mode = cells
        self._per_task = 1
        self.levels: CellLevels | None = None
        self.cells: tuple[str, ...] = self.tasks
        if cells == "task_and_length":
            self._per_task = len(self._buckets) + 1
        elif semantic is not None:
            self._per_task = semantic[1].count
        if cells != "task":
            tag = "s" if semantic is not None else ""  # "code/s3": semantic cell 3 of code
            self.cells = tuple(f"{task}/{tag}{b}" for task in self.tasks for b in range(self._per_task))
        if semantic is not None:
            per = self._per_task
            self.levels = CellLevels([i // per for i in range(len(self.cells))], len(self.tasks))

    def _scanned(self, text: str) -> str:
        if len(text) > 2 * self._half:
            return f"{text[: self._half]} {text[-self._half :]}"
        return text

    def classify(self, text: str) -> int:
        return self._classify(self._scanned(text).lower())

    def _classify(self, text: str) -> int:
        hits = [0] * self._n_rules
        for word in self._keywords.intersection(_words(text)):
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
        scanned = self._scanned(text)
        lowered = scanned.lower()
        route = next((r for r in self.fast_path if r.matches(lowered)), None) if self.fast_path else None
        task = self._classify(lowered)
        tokens = estimate_tokens(len(text) if chars is None else chars)
        expected = self._expected_out[task]
        if max_tokens is not None:
            expected = min(expected, max_tokens)
        bucket = bisect_right(self._buckets, tokens)
        cell = task * self._per_task
        if self.semantic is not None:
            embedder, cells = self.semantic
            cell += cells.cell(embedder.embed(scanned))
        elif self._cell_mode == "task_and_length":
            cell += bucket
        return Profile(self.tasks[task], task, tokens, bucket, expected, cell, self.cells[cell], route)
