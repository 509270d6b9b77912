"""The text of an answer, plain or streamed, for evaluators and the traffic log."""

from __future__ import annotations

from typing import Any

from ._client import Completion

__all__ = ["answer_text", "has_tool_calls", "streamed_answer"]

_PASSED_ON = ("system_fingerprint", "service_tier", "provider")  # a stream's, kept in a plain answer


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


def streamed_answer(completion: Completion, created: int) -> dict[str, Any] | None:
    """The plain ``chat.completion`` a finished stream adds up to (what a cache keeps for a hit to
    give back as JSON or replay as a stream), or None when the stream carried more than its
    summary keeps (``Completion.beyond_text``: other choices, tool calls, log probabilities,
    reasoning, a refusal, audio) or did not finish. ``created``: if the stream did not say."""
    reason = completion.finish_reason
    if (
        not completion.done
        or completion.text is None
        or completion.beyond_text
        or reason in (None, "tool_calls")
    ):
        return None
    data = completion.data
    answer: dict[str, Any] = {"id": data["id"]} if "id" in data else {}
    answer.update(
        object="chat.completion",
        created=data.get("created", created),
        model=completion.model_id,
        choices=[
            {
                "index": 0,
                "message": {"role": "assistant", "content": completion.text, "refusal": None},
                "logprobs": None,
                "finish_reason": reason,
            }
        ],
    )
    answer.update((key, data[key]) for key in _PASSED_ON if key in data)
    if isinstance(data.get("usage"), dict):
        answer["usage"] = dict(data["usage"])
    return answer


def _message(data: dict[str, Any]) -> dict[str, Any]:
    choices = data.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        message = choices[0].get("message")
        if isinstance(message, dict):
            return message
    return {}
