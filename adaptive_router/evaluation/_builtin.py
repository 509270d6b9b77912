"""What an evaluator sees (``Sample``), the built-in evaluators, and plug-ins by dotted path.

An evaluator (its ``name`` attribute names it in weights and metrics; else its class name)
turns one answer into a quality score in [0, 1], or None when it has nothing to
say about it. The built-ins only catch failures (a score of 0), except ``json``, which also
passes a well-formed answer (1) when JSON was asked for::

    class Shouty:                                   # settings: evaluation.plugins: ["mine:Shouty"]
        name = "shouty"
        def evaluate(self, sample: Sample) -> float | None:
            return 0.0 if sample.text.isupper() else None

``evaluate`` may also be a coroutine function; it runs after the answer was sent, and an
exception from it is counted and skipped.
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .._errors import ConfigError

__all__ = [
    "EmptyAnswer",
    "Evaluator",
    "InvalidJson",
    "Refusal",
    "Sample",
    "Truncated",
    "builtin_evaluators",
    "capped",
    "load_plugin",
    "wants_json",
]


@dataclass(frozen=True, slots=True)
class Sample:
    """One answered request, as evaluators see it."""

    request_id: str
    model: str
    messages: Sequence[Mapping[str, Any]]
    text: str
    finish_reason: str | None = None
    wants_json: bool = False
    tool_calls: bool = False
    capped: bool = False  # the client set max_tokens (or max_completion_tokens)
    streamed: bool = False
    body: Mapping[str, Any] = field(default_factory=dict)


class Evaluator(Protocol):
    name: str

    def evaluate(self, sample: Sample) -> float | Awaitable[float | None] | None: ...


def capped(body: Mapping[str, Any]) -> bool:
    """Whether the client capped the answer's length itself."""
    return body.get("max_tokens") is not None or body.get("max_completion_tokens") is not None


def wants_json(body: Mapping[str, Any]) -> bool:
    """Whether the request asked for JSON (``response_format`` json_object or json_schema)."""
    fmt = body.get("response_format")
    return isinstance(fmt, Mapping) and fmt.get("type") in ("json_object", "json_schema")


class EmptyAnswer:
    """An answer with no text and no tool call is a failure."""

    name = "empty"

    def evaluate(self, sample: Sample) -> float | None:
        return 0.0 if not sample.text.strip() and not sample.tool_calls else None


class Truncated:
    """An answer cut off at the model's own limit (``finish_reason: length`` when the client set
    no ``max_tokens``) is a failure; one cut at the client's own cap was asked for: no score."""

    name = "length"

    def evaluate(self, sample: Sample) -> float | None:
        return 0.0 if sample.finish_reason == "length" and not sample.capped else None


class InvalidJson:
    """When JSON was asked for: 1 for an answer that parses, 0 for one that does not."""

    name = "json"

    def evaluate(self, sample: Sample) -> float | None:
        if not sample.wants_json or sample.tool_calls:
            return None
        try:
            json.loads(_unfenced(sample.text))
        except ValueError:
            return 0.0
        return 1.0


class Refusal:
    """An answer that opens with a refusal (simple patterns, case-insensitive) is a failure."""

    name = "refusal"

    def __init__(self, patterns: Sequence[str]) -> None:
        self.pattern = re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE) if patterns else None

    def evaluate(self, sample: Sample) -> float | None:
        if self.pattern is None:
            return None
        return 0.0 if self.pattern.search(sample.text[:300]) else None


def _unfenced(text: str) -> str:
    """The text less a Markdown code fence around it (models often fence JSON)."""
    stripped = text.strip()
    if stripped.startswith("```") and stripped.endswith("```"):
        body = stripped[3:-3]
        return body.split("\n", 1)[1] if "\n" in body else body
    return stripped


def builtin_evaluators(names: Sequence[str], refusal_patterns: Sequence[str]) -> list[Evaluator]:
    """The named built-in evaluators, in order."""
    makers: dict[str, Any] = {
        "empty": EmptyAnswer,
        "length": Truncated,
        "json": InvalidJson,
        "refusal": lambda: Refusal(refusal_patterns),
    }
    return [makers[name]() for name in names]


def load_plugin(path: str) -> Evaluator:
    """An evaluator from ``package.module:Class`` (or ``package.module.Class``), built with no
    arguments; a ``ConfigError`` naming the path when it cannot be imported or is no evaluator."""
    module_name, _, attr = path.rpartition(":") if ":" in path else path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError("evaluation.plugins", f"cannot load {path!r}: {exc}") from exc
    try:
        evaluator = cls()
    except Exception as exc:  # a plug-in's constructor is foreign code: report it, with its name
        raise ConfigError("evaluation.plugins", f"{path!r} could not be built: {exc!r}") from exc
    if not callable(getattr(evaluator, "evaluate", None)):
        raise ConfigError("evaluation.plugins", f"{path!r} has no evaluate(sample) method")
    return evaluator  # type: ignore[no-any-return]  # its name: ``name``, else the class's
