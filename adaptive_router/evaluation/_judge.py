"""The judge: a configured model grades an answer against a rubric, through the same upstream
client, fallbacks and breakers as client traffic, within a daily spend cap.

    judge = Judge(settings.evaluation.judge, executor, pipeline.cost)
    outcome, score = await judge.score(decision, sample)   # ("ok", 0.8), ("timeout", None), ...

The prompt puts the request between ``<question>`` tags and the answer between ``<answer>``
tags after the rubric; the judge replies ``{"score": N}`` on the rubric's scale (``scale``).
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from .._evaluation_settings import DEFAULT_RUBRIC, JudgeSettings
from ..core._decision import Decision, Ranking
from ..upstream._client import Completion
from ..upstream._execution import Executor, Result
from ..upstream._text import answer_text
from ._builtin import Sample

__all__ = ["JUDGE_OUTCOMES", "DailySpend", "Judge", "judge_messages", "parse_score", "side_decision"]

# What became of one judging: scored, or skipped and why.
JUDGE_OUTCOMES = ("ok", "sampled_out", "budget", "timeout", "error", "unparsed")
_SCORE = re.compile(r'"?score"?\s*[:=]\s*(-?\d+(?:\.\d+)?)', re.IGNORECASE)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_DAY_S = 86_400
_TYPICAL_WEIGHT = 0.25  # a settled call's share of a call's typical cost: the last few calls count


class DailySpend:
    """What was spent today (UTC) against a cap; the count starts again at midnight.

    A call holds what such calls typically cost while it runs (``reserve``, then ``settle``), so
    many in flight at once do not overshoot the cap by more than their surprise. Typical is a
    moving average of the last few calls (``reprice`` forgets it when the calls change, e.g. a
    new judge model). Before any has finished nothing is known to hold: the first batch (at most
    ``evaluation.workers`` calls) can pass the cap by what it costs.

        held = spend.reserve()      # None: over the cap
        ...                         # the call
        spend.settle(held, usd)     # usd None: it cost nothing that is known
    """

    def __init__(self, cap_usd: float, clock: Callable[[], float] = time.time) -> None:
        self.cap_usd, self.clock = cap_usd, clock
        self.day = int(clock() // _DAY_S)
        self.spent_usd = 0.0
        self.reserved_usd = 0.0
        self.in_flight = 0
        self.typical_usd: float | None = None  # what a call has cost lately

    def _roll(self) -> None:
        day = int(self.clock() // _DAY_S)
        if day != self.day:
            self.day, self.spent_usd = day, 0.0

    def allows(self) -> bool:
        """Whether another call fits under the cap beside those in flight."""
        self._roll()
        return self.spent_usd + self.reserved_usd < self.cap_usd

    def reserve(self) -> float | None:
        """Hold a call's typical cost for a call about to start; None when over the cap."""
        if not self.allows():
            return None
        held = self.typical_usd or 0.0
        self.reserved_usd += held
        self.in_flight += 1
        return held

    def settle(self, held: float, usd: float | None) -> None:
        """A reserved call finished: its hold is released and what it cost (if known) spent."""
        self.in_flight = max(self.in_flight - 1, 0)
        self.reserved_usd = max(self.reserved_usd - held, 0.0) if self.in_flight else 0.0
        if usd is not None:
            self._roll()
            self.spent_usd += usd
            last = self.typical_usd
            self.typical_usd = usd if last is None else last + _TYPICAL_WEIGHT * (usd - last)

    def reprice(self) -> None:
        """The calls changed (another model): what they typically cost is learned again."""
        self.typical_usd = None


def side_decision(decision: Decision, request_id: str, chain: Sequence[str], policy: str) -> Decision:
    """A decision for a call made beside ``decision`` (a judge, a shadow): the same profile,
    its own id and chain, so its attempts are learned in the right cell and nothing else."""
    k = len(chain)
    ranking = Ranking(
        ids=list(chain),
        terms=np.zeros((3, k)),
        value=np.zeros(k),
        bonus=np.zeros(k),
        offset=0.0,
        weights=decision.weights,
        scales=decision.scales,  # the parent's: a log line's cost term reads on its scale
    )
    return Decision(
        request_id=request_id,
        chain=list(chain),
        propensity=None,
        policy=policy,
        explored=False,
        profile=decision.profile,
        mode=decision.mode,
        weights=decision.weights,
        eligible=k,
        requested=None,
        pinned=True,
        ranking=ranking,
    )


def _render(messages: Sequence[Mapping[str, Any]]) -> str:
    """The conversation as text: a lone user message as it is, else ``role: content`` lines."""
    texts = [(str(m.get("role", "user")), _content(m.get("content"))) for m in messages]
    if len(texts) == 1 and texts[0][0] == "user":
        return texts[0][1]
    return "\n\n".join(f"{role}: {text}" for role, text in texts)


def _content(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def judge_messages(
    rubric: str, messages: Sequence[Mapping[str, Any]], answer: str, max_chars: int
) -> list[dict[str, str]]:
    """The judge's request: the rubric, then the question and the answer in their tags."""
    question = _render(messages)[-max_chars:]
    return [
        {"role": "system", "content": rubric},
        {
            "role": "user",
            "content": f"<question>\n{question}\n</question>\n\n<answer>\n{answer[:max_chars]}\n</answer>",
        },
    ]


def parse_score(text: str, scale: float) -> float | None:
    """The judge's score on [0, 1]: ``{"score": N}``, ``score: N`` or a lone number, over ``scale``."""
    stripped = text.strip()
    value: Any
    try:
        data = json.loads(stripped)
        value = data.get("score") if isinstance(data, dict) else data
    except ValueError:
        match = _SCORE.search(stripped)
        value = match.group(1) if match else (stripped if _NUMBER.fullmatch(stripped) else None)
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(number) or not 0 <= number <= scale:
        return None
    return number / scale


class Judge:
    """Grades answers with the configured judge model; skips (and says why) rather than fail."""

    def __init__(
        self,
        settings: JudgeSettings,
        executor: Executor,
        cost: Callable[[Completion], float],
        *,
        clock: Callable[[], float] = time.time,
        spend: DailySpend | None = None,
    ) -> None:
        assert settings.model is not None
        self.settings = settings
        self.executor = executor
        self.cost = cost
        self.chain = [settings.model, *settings.fallbacks]
        self.spend = DailySpend(settings.daily_usd, clock) if spend is None else spend

    async def _ask(self, decision: Decision, sample: Sample) -> Result:
        s = self.settings
        body = {
            "messages": judge_messages(s.rubric or DEFAULT_RUBRIC, sample.messages, sample.text, s.max_chars),
            "max_tokens": s.max_tokens,
            "temperature": 0,
        }
        side = side_decision(decision, f"{decision.request_id}~judge", self.chain, "judge")
        return await asyncio.wait_for(
            self.executor.complete(side, body, s.timeout_s), s.timeout_s * len(self.chain) + 1.0
        )

    async def score(self, decision: Decision, sample: Sample) -> tuple[str, float | None]:
        """``("ok", score)``, or the reason it was skipped (``budget``, ``timeout``, ``error``,
        ``unparsed``) and None."""
        held = self.spend.reserve()
        if held is None:
            return "budget", None
        usd: float | None = None
        try:
            result = await self._ask(decision, sample)
            usd = None if result.completion is None else self.cost(result.completion)
        except TimeoutError:
            return "timeout", None
        finally:
            self.spend.settle(held, usd)  # however it ended, even cancelled
        if result.completion is None:
            return ("timeout" if result.all_timed_out else "error"), None
        s = self.settings
        score = parse_score(answer_text(result.completion), s.scale)
        return ("ok", score) if score is not None else ("unparsed", None)
