"""Preference pairs (DPO triples) from the traffic log, and the log lines evaluators write.

    pairs = preference_pairs(["logs/traffic.jsonl"])       # ReplayError when prompts are hashed
    write_pairs(pairs, "pairs.jsonl")

Each pair is ``{prompt, chosen, rejected, chosen_model, rejected_model, scores}``: ``prompt`` as
logged (a chat request's messages, or a prompt string), ``chosen`` and ``rejected`` the two
answers' text, ``scores`` their scores on [0, 1]. Pairs come from shadow comparisons
(``preference`` lines) and from answers to the same prompt by two different models, each scored
by client feedback, else the judge, else the other evaluators (mean per answer).

Lines evaluators add to the traffic log (schema version 1)::

    {"v": 1, "type": "evaluation", "request_id": "req-...", "model": "...",
     "evaluator": "judge", "score": 0.8, "weight": 1.0, "time": 1732200043.1}
    {"v": 1, "type": "preference", "request_id": "req-...", "time": 1732200044.0,
     "chosen_model": "...", "rejected_model": "...", "scores": {"chosen": 0.9, "rejected": 0.4},
     "prompt_sha256": "...", "prompt": [...], "chosen": "...", "rejected": "..."}
     # prompt with server.log_prompts, chosen/rejected with server.log_answers
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .._errors import ReplayError
from ._trafficlog import SCHEMA_VERSION, prompt_digest

__all__ = [
    "evaluation_record",
    "preference_pairs",
    "preference_record",
    "write_pairs",
]

_HASHED = (
    "holds prompt hashes only (server.log_prompts is false), and preference pairs need the prompt "
    "text: set server.log_prompts: true and server.log_answers: true, then collect a new log"
)
_NO_ANSWERS = (
    "holds prompts but no answer text (server.log_answers is false): set server.log_answers: true, "
    "then collect a new log"
)


class _Answered(Protocol):  # read-only members: evaluators' frozen Sample qualifies
    @property
    def model(self) -> str: ...
    @property
    def messages(self) -> Sequence[Mapping[str, Any]]: ...
    @property
    def text(self) -> str: ...


def evaluation_record(
    request_id: str, model: str, evaluator: str, score: float, weight: float, now: float | None = None
) -> dict[str, Any]:
    return {
        "v": SCHEMA_VERSION,
        "type": "evaluation",
        "request_id": request_id,
        "model": model,
        "evaluator": evaluator,
        "score": round(score, 6),
        "weight": round(weight, 6),
        "time": round(time.time() if now is None else now, 3),
    }


def preference_record(
    chosen: _Answered,
    chosen_score: float,
    rejected: _Answered,
    rejected_score: float,
    *,
    request_id: str | None = None,
    prompts: bool = False,
    answers: bool = False,
    now: float | None = None,
) -> dict[str, Any]:
    """A shadow comparison's line: which answer won, with text only when the log may hold it."""
    messages = list(chosen.messages)
    record: dict[str, Any] = {
        "v": SCHEMA_VERSION,
        "type": "preference",
        "request_id": request_id or getattr(chosen, "request_id", "").split("~")[0],
        "time": round(time.time() if now is None else now, 3),
        "chosen_model": chosen.model,
        "rejected_model": rejected.model,
        "scores": {"chosen": round(chosen_score, 6), "rejected": round(rejected_score, 6)},
        "prompt_sha256": prompt_digest(messages),
    }
    if prompts:
        record["prompt"] = messages
    if answers:
        record["chosen"], record["rejected"] = chosen.text, rejected.text
    return record


# --- reading -------------------------------------------------------------------------------


@dataclass
class _Answer:
    model: str
    prompt: Any
    digest: str
    text: str | None
    feedback: list[float] = field(default_factory=list)
    judge: list[float] = field(default_factory=list)
    other: list[float] = field(default_factory=list)

    def score(self) -> float | None:
        for scores in (self.feedback, self.judge, self.other):
            if scores:
                return sum(scores) / len(scores)
        return None


@dataclass
class _Log:
    answers: dict[str, _Answer] = field(default_factory=dict)
    shadows: list[dict[str, Any]] = field(default_factory=list)
    decisions: int = 0
    with_prompt: int = 0
    with_answer: int = 0


def _lines(paths: Iterable[str | Path]) -> Iterator[dict[str, Any]]:
    for path in paths:
        try:
            with open(path, encoding="utf-8") as fh:
                for line in fh:
                    try:
                        record = json.loads(line)
                    except ValueError:
                        continue  # a line cut short by a crash or a rotation
                    if isinstance(record, dict):
                        yield record
        except OSError as exc:
            raise ReplayError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _read(paths: Iterable[str | Path]) -> _Log:
    log = _Log()
    scores: list[dict[str, Any]] = []
    for record in _lines(paths):
        kind = record.get("type")
        if kind == "decision" and record.get("answered_by"):
            log.decisions += 1
            _decision(log, record)
        elif kind in ("feedback", "evaluation"):
            scores.append(record)
        elif kind == "preference":
            log.shadows.append(record)
    for record in scores:  # feedback may come before its decision line is written
        _score(log, record)
    return log


def _decision(log: _Log, record: Mapping[str, Any]) -> None:
    if "prompt" not in record:
        return
    log.with_prompt += 1
    text = record.get("answer")
    log.with_answer += isinstance(text, str)
    log.answers[str(record.get("request_id"))] = _Answer(
        str(record["answered_by"]), record["prompt"], str(record.get("prompt_sha256")), text
    )


def _score(log: _Log, record: Mapping[str, Any]) -> None:
    answer = log.answers.get(str(record.get("request_id")))
    score = record.get("score")
    if answer is None or not isinstance(score, int | float):
        return
    if record.get("model") not in (None, answer.model):
        return  # an evaluation of a shadow's answer, not of this one
    evaluator = record.get("evaluator")
    bucket = (
        answer.feedback
        if record["type"] == "feedback"
        else answer.judge
        if evaluator == "judge"
        else answer.other
    )
    bucket.append(float(score))


def preference_pairs(paths: Sequence[str | Path], *, min_margin: float = 0.1) -> list[dict[str, Any]]:
    """Pairs from the logs at ``paths``; ``ReplayError`` when prompts or answers were not logged."""
    log = _read(paths)
    shadows = [s for s in log.shadows if "prompt" in s and "chosen" in s]
    if log.decisions and not log.with_prompt and not shadows:
        raise ReplayError(f"{', '.join(map(str, paths))} {_HASHED}")
    if log.with_prompt and not log.with_answer and not shadows:
        raise ReplayError(f"{', '.join(map(str, paths))} {_NO_ANSWERS}")
    pairs = [
        _pair(s["prompt"], s["chosen"], s["rejected"], s["chosen_model"], s["rejected_model"], s["scores"])
        for s in shadows
    ]
    pairs += _logged_pairs(log, min_margin)
    return pairs


def _pair(
    prompt: Any, chosen: str, rejected: str, cm: str, rm: str, scores: Mapping[str, Any]
) -> dict[str, Any]:
    return {
        "prompt": prompt,
        "chosen": chosen,
        "rejected": rejected,
        "chosen_model": cm,
        "rejected_model": rm,
        "scores": {"chosen": scores["chosen"], "rejected": scores["rejected"]},
    }


def _logged_pairs(log: _Log, min_margin: float) -> list[dict[str, Any]]:
    """For each prompt answered by two or more models: its best answer against each answer of
    another model scoring at least ``min_margin`` lower."""
    by_prompt: dict[str, list[tuple[float, _Answer]]] = {}
    for answer in log.answers.values():
        score = answer.score()
        if score is not None and answer.text is not None:
            by_prompt.setdefault(answer.digest, []).append((score, answer))
    pairs = []
    for scored in by_prompt.values():
        best_score, best = max(scored, key=lambda item: item[0])
        for score, other in scored:
            if other.model != best.model and best_score - score >= min_margin:
                assert best.text is not None and other.text is not None
                scores = {"chosen": round(best_score, 6), "rejected": round(score, 6)}
                pairs.append(_pair(best.prompt, best.text, other.text, best.model, other.model, scores))
    return pairs


def write_pairs(pairs: Iterable[Mapping[str, Any]], out: str | Path) -> int:
    """Write one JSON object per line; returns how many."""
    count = 0
    with open(out, "w", encoding="utf-8") as fh:
        for pair in pairs:
            fh.write(json.dumps(pair, ensure_ascii=False) + "\n")
            count += 1
    return count
