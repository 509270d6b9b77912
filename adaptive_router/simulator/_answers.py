"""The simulated upstream's answers: their length, filler text, and OpenAI's response bodies
(a whole ``chat.completion`` or ``chat.completion.chunk`` events), as a real server writes them."""

from __future__ import annotations

import hashlib
import json
import math
import random
import statistics
import time
from dataclasses import dataclass
from typing import Any

from ._scenario import CHARS_PER_TOKEN, Scenario
from ._wire import ChatRequest

__all__ = ["ChunkWriter", "PlannedAnswer", "completion_body", "content_text", "plan_completion", "usage_of"]


# ---------------------------------------------------------------------------------------------
# Completions: length, filler text, response bodies


_WORD_LETTERS = (
    "theandforyouarebutnotallanycanhadherwasoneouroutdaygethashimhishowmannewnowoldseetwowaywhoboydid"
    "itsletputsayshetoouseactaddageagoairarmartaskbadbagbedbigbitboxbusbuycarcatcupcutdogdrydueeareat"
    "eggendeyefarfewfitflyfungasgodgunguyhathithoticejobkeykidlawlayleglielotlowmapmixnetnoroilownpay"
    "perpopredrowrunseasetsitsixskysonsuntaxteatentietoptoytrywarwebwetwinyes"
)
_WORDS = [_WORD_LETTERS[i : i + 3] for i in range(0, len(_WORD_LETTERS), 3)]
_FILLER_TOKENS = 2048
# Every token is exactly CHARS_PER_TOKEN characters ("cat "), so content length = 4 * tokens.
_FILLER = "".join(f"{w} " for w in random.Random(0).choices(_WORDS, k=_FILLER_TOKENS))
_FILLER2 = _FILLER * 2
_NORMAL = statistics.NormalDist()


def _filler(offset: int, tokens: int) -> str:
    start = (offset % _FILLER_TOKENS) * CHARS_PER_TOKEN
    end = start + tokens * CHARS_PER_TOKEN
    if end <= len(_FILLER2):
        return _FILLER2[start:end]
    return (_FILLER * (end // len(_FILLER) + 1))[start:end]


@dataclass(frozen=True)
class PlannedAnswer:
    content: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    quality_u: float = 0.5  # a uniform draw for the answer's true quality
    cost_usd: float | None = None  # reported as usage.cost (the judge only)


def plan_completion(req: ChatRequest, scenario: Scenario) -> PlannedAnswer:
    """Length and text depend only on (seed, model, messages), then the request's cap applies."""
    h = hashlib.blake2b(digest_size=8)
    h.update(f"{scenario.seed}\x1f{req.model}".encode())
    chars = 0
    for msg in req.messages:
        text = content_text(msg.content)
        chars += len(text)
        h.update(f"\x1e{msg.role}\x1f{text}".encode())
    value = int.from_bytes(h.digest(), "big")
    u = ((value >> 11) + 0.5) / 2.0**53
    natural = round(
        scenario.output_tokens_median * math.exp(scenario.output_tokens_sigma * _NORMAL.inv_cdf(u))
    )
    tokens = min(max(natural, 1), scenario.max_output_tokens)
    cap = req.max_completion_tokens or req.max_tokens
    finish = "stop"
    if cap is not None and tokens > cap:
        tokens, finish = cap, "length"
    quality_u = random.Random(value).random()
    prompt_tokens = math.ceil(chars / CHARS_PER_TOKEN)
    return PlannedAnswer(_filler(value, tokens), prompt_tokens, tokens, finish, quality_u)


def content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if p.get("type", "text") == "text")
    return ""


def usage_of(c: PlannedAnswer) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "prompt_tokens": c.prompt_tokens,
        "completion_tokens": c.completion_tokens,
        "total_tokens": c.prompt_tokens + c.completion_tokens,
    }
    if c.cost_usd is not None:
        usage["cost"] = c.cost_usd
    return usage


def completion_body(completion_id: str, model: str, c: PlannedAnswer) -> bytes:
    body = {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": c.content, "refusal": None},
                "logprobs": None,
                "finish_reason": c.finish_reason,
            }
        ],
        "usage": usage_of(c),
    }
    return json.dumps(body, separators=(",", ":")).encode()


class ChunkWriter:
    """Builds ``data: {chat.completion.chunk}\\n\\n`` events from a fixed prefix and suffix, so
    each chunk costs one string join rather than a JSON encoding of the whole object."""

    def __init__(self, completion_id: str, model: str, include_usage: bool) -> None:
        head = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": None,
        }
        self.include_usage = include_usage
        self._prefix = (
            "data: " + json.dumps(head, separators=(",", ":"))[:-1] + ',"choices":[{"index":0,"delta":'
        )
        usage = ',"usage":null' if include_usage else ""
        self._suffix = ',"logprobs":null,"finish_reason":null}]' + usage + "}\n\n"
        self._final = ',"logprobs":null,"finish_reason":"%s"}]' + usage + "}\n\n"
        self._head = head

    def content(self, text: str, *, first: bool = False) -> str:
        role = '{"role":"assistant","content":""}' if first else None
        opening = self._prefix + role + self._suffix if role else ""
        return opening + self._prefix + '{"content":' + json.dumps(text) + "}" + self._suffix

    def finish(self, c: PlannedAnswer) -> str:
        out = self._prefix + "{}" + self._final % c.finish_reason
        if self.include_usage:
            usage_chunk = dict(self._head, choices=[], usage=usage_of(c))
            out += "data: " + json.dumps(usage_chunk, separators=(",", ":")) + "\n\n"
        return out + "data: [DONE]\n\n"
