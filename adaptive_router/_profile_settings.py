"""The ``profile`` section of the settings: task classes, fast-path rules and learner cells.

Kept apart from ``_settings`` because the default keyword lists are long; ``Settings`` holds a
``ProfileSettings`` like any other section.
"""

from __future__ import annotations

import itertools
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["FastPathRule", "ProfileSettings", "Section", "TaskRule", "compiled_patterns"]


def compiled_patterns(patterns: list[str]) -> list[str]:
    """``patterns`` when each is a valid regex, else a ValueError naming the bad one."""
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"bad pattern {pattern!r}: {exc}") from None
    return patterns


class Section(BaseModel):
    """A settings section: unknown keys are errors, values are read-only."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class TaskRule(Section):
    """How a task class is recognised: whole words (lower case) and, sparingly, regexes.

    Words are matched as a set against the words of the prompt, which costs the same for 40
    keywords as for 4; each regex is another pass over the text, so keep them few and anchored
    on a literal. Both are matched against the lower-cased prompt.
    """

    keywords: list[str] = Field(default_factory=list)
    patterns: list[str] = Field(default_factory=list)

    @field_validator("patterns")
    @classmethod
    def _patterns_compile(cls, patterns: list[str]) -> list[str]:
        return compiled_patterns(patterns)

    @field_validator("keywords")
    @classmethod
    def _keywords_lower(cls, keywords: list[str]) -> list[str]:
        return [k.strip().lower() for k in keywords if k.strip()]


class FastPathRule(TaskRule):
    """A keyword fast-path rule (seed B's first layer): a prompt matching ``keywords`` or
    ``patterns`` goes straight to ``mode``, ``allow`` and/or ``model``, before any scoring.
    Fields the client set itself (its own mode, weights, allow-list or model) win."""

    name: str = ""
    mode: str | None = None
    allow: list[str] = Field(default_factory=list)
    model: str | None = None

    @model_validator(mode="after")
    def _routes_somewhere(self) -> FastPathRule:
        if not (self.keywords or self.patterns):
            raise ValueError("a fast-path rule needs keywords or patterns")
        if self.mode is None and not self.allow and self.model is None:
            raise ValueError("a fast-path rule needs a mode, an allow list or a model")
        return self


def _default_tasks() -> dict[str, TaskRule]:
    return {
        "code": TaskRule(
            keywords=[
                "code",
                "python",
                "javascript",
                "typescript",
                "java",
                "rust",
                "golang",
                "c++",
                "sql",
                "regex",
                "function",
                "def",
                "class",
                "bug",
                "debug",
                "compile",
                "compiler",
                "refactor",
                "api",
                "json",
                "stack trace",
                "traceback",
                "exception",
                "script",
                "program",
                "algorithm",
                "html",
                "css",
            ],
            patterns=[r"```"],
        ),
        "math": TaskRule(
            keywords=[
                "math",
                "equation",
                "integral",
                "derivative",
                "solve",
                "prove",
                "proof",
                "probability",
                "calculate",
                "compute",
                "arithmetic",
                "algebra",
                "geometry",
                "theorem",
                "how many",
            ],
            # "2 + 3", "x^2 = 4", "7 - 2" (spaced minus only: "2024-01-05" is a date, not a sum)
            patterns=[r"\d\s*[+*/^=×÷]\s*\d", r"\d\s+-\s+\d"],
        ),
        "translation": TaskRule(
            keywords=[
                "translate",
                "translation",
                "translated",
                "into french",
                "into english",
                "into german",
                "into spanish",
                "into chinese",
                "into japanese",
            ],
        ),
        "summarisation": TaskRule(
            keywords=[
                "summarise",
                "summarize",
                "summary",
                "summarisation",
                "summarization",
                "tldr",
                "tl;dr",
                "key points",
                "in one sentence",
            ],
        ),
    }


class ProfileSettings(Section):
    """Task classes by keyword (most hits wins, ties in settings order; none: ``default_task``)."""

    tasks: dict[str, TaskRule] = Field(default_factory=_default_tasks)
    default_task: str = "general"
    scan_chars: int = Field(default=2000, ge=64, description="head and tail of the last user turn scanned")
    length_buckets: list[int] = Field(default_factory=lambda: [256, 2048])
    # Semantic cells by default: on both outcome tables of benchmarks/learning.py they route above
    # the two-model hull where the keyword cells ("task") fall below it (README, "Learning"); they
    # need only NumPy and the bundled table. Length cells gained nothing beyond seed noise.
    cells: Literal["task", "task_and_length", "task_and_semantic"] = Field(
        default="task_and_semantic",
        description="the learner's rows: task classes, (task class, length bucket) or (task class, "
        "semantic cell) pairs",
    )
    # task_and_semantic: 2**semantic_bits cells of the static MiniLM embedding per task class.
    semantic_bits: int = Field(default=3, ge=0, le=8)
    semantic_table: str | None = Field(
        default=None, description="the distilled embedding table (.npz); default: the bundled one"
    )
    fast_path: list[FastPathRule] = Field(
        default_factory=list,
        description="keyword rules checked first: a match picks a mode, an allow list or a model",
    )
    expected_output_tokens: dict[str, int] = Field(
        default_factory=lambda: {
            "general": 300,
            "code": 500,
            "math": 400,
            "translation": 200,
            "summarisation": 200,
        }
    )

    @field_validator("length_buckets")
    @classmethod
    def _buckets_increasing(cls, buckets: list[int]) -> list[int]:
        if any(b <= a for a, b in itertools.pairwise(buckets)) or any(b <= 0 for b in buckets):
            raise ValueError("length_buckets must be positive and strictly increasing")
        return buckets

    @model_validator(mode="after")
    def _default_not_a_rule(self) -> ProfileSettings:
        if self.default_task in self.tasks:
            raise ValueError(f"default_task {self.default_task!r} must not also have rules")
        return self

    def task_names(self) -> list[str]:
        return [*self.tasks, self.default_task]
