"""The ``evaluation`` section of the settings: built-in evaluators, plug-ins, the judge, shadows.

Kept apart from ``_settings`` so that the section and its rubric stay in one place.
"""

from __future__ import annotations

import re

from pydantic import Field, field_validator, model_validator

from ._profile_settings import Section, compiled_patterns

__all__ = ["BUILTIN_EVALUATORS", "DEFAULT_RUBRIC", "EvaluationSettings", "JudgeSettings", "ShadowSettings"]

BUILTIN_EVALUATORS = ("empty", "length", "json", "refusal")
_DOTTED = re.compile(r"^[A-Za-z_][\w.]*[:.][A-Za-z_]\w*$")

DEFAULT_RUBRIC = (
    "You grade an AI assistant's answer to a user's request. Judge whether the answer is "
    "correct, complete, follows the user's instructions and is helpful; ignore style and length "
    "unless the request asks for them. The request is between <question> tags, the answer "
    'between <answer> tags. Reply with only a JSON object {"score": N}, N an integer from 0 '
    "(useless or wrong) to 10 (fully correct and helpful)."
)


class JudgeSettings(Section):
    """A model that grades answers (unset ``model``: no judge)."""

    model: str | None = Field(default=None, min_length=1, description="the judge's model id; unset: no judge")
    fallbacks: list[str] = Field(default_factory=list, description="tried in order when the judge fails")
    rubric: str | None = Field(
        default=None, min_length=1, description="the judge's system prompt; unset: DEFAULT_RUBRIC"
    )
    scale: float = Field(default=10.0, gt=0, description="the top of the rubric's score range")
    sample_rate: float = Field(default=0.1, ge=0, le=1, description="share of answers judged")
    daily_usd: float = Field(default=1.0, ge=0, description="judge spend cap per UTC day, per process")
    timeout_s: float = Field(default=30.0, gt=0, description="per judge attempt")
    max_tokens: int = Field(default=64, ge=1, description="the judge's answer length cap")
    max_chars: int = Field(default=12_000, ge=100, description="question and answer cut to this length")
    weight: float = Field(default=1.0, ge=0, description="evidence weight of one judge score")


class ShadowSettings(Section):
    """Send a sample of requests to a second model too, judge both, learn from both."""

    enabled: bool = False
    sample_rate: float = Field(default=0.01, ge=0, le=1, description="share of answers shadowed")
    daily_usd: float = Field(default=1.0, ge=0, description="shadow spend cap per UTC day, per process")
    models: list[str] = Field(
        default_factory=list, description="second models to pick from; empty: the decision's first fallback"
    )
    timeout_s: float = Field(default=60.0, gt=0)
    explore: bool = Field(
        default=False,
        description="explore by shadow: when the policy picks a model to learn about it, the "
        "best-scoring model answers and the pick is sent beside it as a shadow (both judged), "
        "within daily_usd; over it, the pick answers as without this",
    )


class EvaluationSettings(Section):
    """Quality signals without client feedback, computed after the answer is sent."""

    enabled: bool = Field(default=True, description="run the evaluators below (off: none, no judge)")
    builtin: list[str] = Field(default_factory=lambda: list(BUILTIN_EVALUATORS))
    plugins: list[str] = Field(default_factory=list, description="evaluator classes as module:Class")
    weights: dict[str, float] = Field(
        default_factory=lambda: {"empty": 1.0, "length": 0.5, "json": 1.0, "refusal": 0.5},
        description="evidence weight per evaluator name (missing: 1.0)",
    )
    refusal_patterns: list[str] = Field(
        default_factory=lambda: [
            r"^\s*(i'm|i am) sorry,? but i (can't|cannot|won't)",
            r"^\s*i (can't|cannot|won't) (help|assist|comply) with",
            r"^\s*as an ai( language model)?,? i (can't|cannot)",
        ],
        description="regexes (case-insensitive) on the answer's start that mark a refusal",
    )
    queue_size: int = Field(default=1000, ge=1, description="answers waiting; beyond it they are skipped")
    workers: int = Field(default=4, ge=1, le=256, description="evaluations run at once")
    timeout_s: float = Field(default=10.0, gt=0, description="an async plug-in taking longer is skipped")
    judge: JudgeSettings = JudgeSettings()
    shadow: ShadowSettings = ShadowSettings()

    @field_validator("builtin")
    @classmethod
    def _known_builtin(cls, names: list[str]) -> list[str]:
        unknown = sorted(set(names) - set(BUILTIN_EVALUATORS))
        if unknown:
            raise ValueError(f"unknown built-in evaluator(s) {unknown}; known: {list(BUILTIN_EVALUATORS)}")
        return names

    @field_validator("plugins")
    @classmethod
    def _dotted(cls, paths: list[str]) -> list[str]:
        for path in paths:
            if not _DOTTED.match(path):
                raise ValueError(f"{path!r} is not a dotted path like 'package.module:Class'")
        return paths

    @field_validator("weights")
    @classmethod
    def _weights(cls, weights: dict[str, float]) -> dict[str, float]:
        for name, value in weights.items():
            if not value >= 0 or value != value or value == float("inf"):
                raise ValueError(f"{name}: weight must be a finite number >= 0, got {value!r}")
        return weights

    @field_validator("refusal_patterns")
    @classmethod
    def _compile(cls, patterns: list[str]) -> list[str]:
        return compiled_patterns(patterns)

    @model_validator(mode="after")
    def _shadow_needs_judge(self) -> EvaluationSettings:
        for key in ("enabled", "explore"):
            if getattr(self.shadow, key) and self.judge.model is None:
                raise ValueError(
                    f"shadow.{key} needs judge.model (both answers of a shadow are judged): "
                    f"set evaluation.judge.model, or shadow.{key}: false"
                )
        return self
