"""The text of an answer, plain or streamed, for evaluators and the traffic log."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from ._client import Completion

__all__ = ["answer_text", "has_tool_calls", "streamed_answer"]

# Request fields whose streamed answers carry what a stream's summary does not keep (it keeps the
# first choice's text, the finish reason, id, model and usage): such streams are not summarised.
_BEYOND_THE_SUMMARY = (
    "tools",
    "functions",
    "logprobs",
    "top_logprobs",
    "reasoning",
    "include_reasoning",
    "audio",
)


def answer_text(completion: Completion) -> str:
    """The first choice's message text (a stream's text gathered from its deltas); "" if none."""
    if completion.text is not None:
        return completion.text
    message = _message(completion.data)
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def has_tool_calls(completion: Completion) -> bool:
    """Whether the answer calls tools (its text may then rightly be empty)."""
    return completion.finish_reason == "tool_calls" or bool(_message(completion.data).get("tool_calls"))


def streamed_answer(body: Mapping[str, Any], completion: Completion) -> dict[str, Any] | None:
    """The plain ``chat.completion`` a finished stream adds up to (what a cache hit gives back,
    as JSON or replayed as a stream), or None when the stream may have carried more than its
    summary keeps: several choices, tool calls, log probabilities, reasoning or audio."""
    n = body.get("n")
    if not completion.done or completion.text is None or (n is not None and n != 1):
        return None
    if has_tool_calls(completion) or any(body.get(name) for name in _BEYOND_THE_SUMMARY):
        return None
    data = completion.data
    message = {"role": "assistant", "content": completion.text}
    answer: dict[str, Any] = {
        "id": data.get("id"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": completion.model_id,
        "choices": [{"index": 0, "message": message, "finish_reason": completion.finish_reason or "stop"}],
    }
    if isinstance(data.get("usage"), dict):
        answer["usage"] = dict(data["usage"])
    if answer["id"] is None:
        del answer["id"]
    return answer


def _message(data: dict[str, Any]) -> dict[str, Any]:
    choices = data.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        message = choices[0].get("message")
        if isinstance(message, dict):
            return message
    return {}
