"""The simulated judge: grades the simulator's own answers by their true quality, with noise.

Every answer the simulator gives has a true quality: its model's ``quality``, moved per prompt
by ``Scenario.quality_spread`` (deterministic in the seed, the model and the messages). The
judge model (``JUDGE_MODEL``) finds the answer between ``<answer>`` tags in its request (the
router's judge prompt), looks up which model gave it, and replies ``{"score": N}`` on 0-10: the
true quality plus ``Scenario.judge_noise`` of Gaussian error. An answer it never gave scores
0 when empty and 5 otherwise. It reports ``usage.cost`` the OpenRouter way, so spend caps bite.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import statistics
from collections import OrderedDict

from ._scenario import CHARS_PER_TOKEN, Scenario

__all__ = [
    "JUDGE_MODEL",
    "JUDGE_PRICE",
    "Answers",
    "extract_answer",
    "judge_answer",
    "judge_reply",
    "true_quality",
]

JUDGE_MODEL = "simulator/judge"
JUDGE_PRICE = (1e-6, 4e-6)  # USD per prompt token, per completion token
_REMEMBERED = 32_768  # answers kept for the judge (16-byte digests)
_NORMAL = statistics.NormalDist()


def _key(text: str) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


class Answers:
    """The latest answers' digests and who gave them, with their true quality (bounded)."""

    def __init__(self, size: int = _REMEMBERED) -> None:
        self.size = size
        self._seen: OrderedDict[bytes, tuple[str, float]] = OrderedDict()

    def remember(self, text: str, model: str, quality: float) -> None:
        key = _key(text)
        self._seen[key] = (model, quality)
        self._seen.move_to_end(key)
        if len(self._seen) > self.size:
            self._seen.popitem(last=False)

    def lookup(self, text: str) -> tuple[str, float] | None:
        return self._seen.get(_key(text))


def true_quality(model_quality: float, u: float, spread: float) -> float:
    """An answer's true quality: its model's, moved by ``spread`` sd (``u`` a uniform draw)."""
    return min(1.0, max(0.0, model_quality + spread * _NORMAL.inv_cdf(u)))


def extract_answer(prompt: str) -> str | None:
    """The text between the last ``<answer>`` and ``</answer>`` tags (the router's judge prompt)."""
    start = prompt.rfind("<answer>\n")
    end = prompt.rfind("\n</answer>")
    if start < 0 or end < start:
        return None
    return prompt[start + len("<answer>\n") : end]


def judge_reply(answers: Answers, prompt: str, seed: int, noise: float) -> str:
    """The judge's reply, ``{"score": N}`` with N on 0-10 (one decimal)."""
    answer = extract_answer(prompt)
    found = answers.lookup(answer) if answer is not None else None
    truth = found[1] if found is not None else (0.5 if (answer or "").strip() else 0.0)
    rng = random.Random(f"{seed}\x1f{prompt}")
    score = min(1.0, max(0.0, truth + noise * rng.gauss()))
    return json.dumps({"score": round(10 * score, 1)})


def judge_answer(
    answers: Answers, prompt: str, scenario: Scenario, prompt_tokens: int
) -> tuple[str, int, float]:
    """The judge's reply padded to whole tokens, its token count and its cost in USD."""
    reply = judge_reply(answers, prompt, scenario.seed, scenario.judge_noise)
    tokens = math.ceil(len(reply) / CHARS_PER_TOKEN)
    cost = prompt_tokens * JUDGE_PRICE[0] + tokens * JUDGE_PRICE[1]
    return reply.ljust(tokens * CHARS_PER_TOKEN), tokens, cost
