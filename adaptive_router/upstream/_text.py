"""The text of an answer, plain or streamed, for evaluators and the traffic log."""

from __future__ import annotations

from typing import Any

from ._client import Completion

__all__ = ["answer_text", "has_tool_calls"]


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


def _message(data: dict[str, Any]) -> dict[str, Any]:
    choices = data.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        message = choices[0].get("message")
        if isinstance(message, dict):
            return message
    return {}
