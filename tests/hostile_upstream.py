"""A misbehaving OpenAI-compatible upstream, for tests and benchmarks: it answers 200 with what a
broken or hostile provider might send. The client picks the misbehaviour with an extra body field
(``"hostile": "<mode>"``), which the router passes upstream like any field it does not know.

    app = create_hostile_app()
    with running_server(app) as url:        # tests.servers
        ...                                 # a provider with base_url=url + "/v1"

Modes (``size`` in the body sets the byte count where one is used; default 200,000):

- ``ok``: a normal answer (or stream);
- ``deep``: a 200 answer with an array nested 1,000 deep (under orjson's 1,024 decode limit);
- ``huge``: a 200 answer of ``size`` bytes, sent in 16 KiB chunks;
- ``stream_deep_first`` / ``stream_deep_later``: a stream whose first / second event is nested
  1,000 deep;
- ``stream_long_line``: a stream whose first line is ``size`` bytes long, sent in 16 KiB chunks;
- ``rich``: a plain answer of two choices, the first calling a tool (with log probabilities),
  the second a refusal;
- ``stream_text`` / ``stream_reasoning``: a well-formed stream that finishes (``stop``), the
  latter with reasoning in its first delta, as OpenRouter sends for reasoning models.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

__all__ = ["DEPTH", "RICH_CHOICES", "create_hostile_app"]

DEPTH = 1000
CHUNK = 16 * 1024
_DEEP = b"[" * DEPTH + b"]" * DEPTH


def _answer(model: str, extra: bytes = b"") -> bytes:
    head = {"id": "chatcmpl-hostile", "object": "chat.completion", "created": 0, "model": model}
    message = b'{"role":"assistant","content":"hello"' + extra + b"}"
    return (
        json.dumps(head).encode()[:-1]
        + b',"choices":[{"index":0,"message":'
        + message
        + b',"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":1}}'
    )


def _chunk(model: str, extra: bytes = b"") -> bytes:
    return (
        b'data: {"id":"chatcmpl-hostile","object":"chat.completion.chunk","model":'
        + json.dumps(model).encode()
        + b',"choices":[{"index":0,"delta":{"content":"hi"'
        + extra
        + b'},"finish_reason":null}]}\n\n'
    )


async def _pieces(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), CHUNK):
        yield data[start : start + CHUNK]


def _finish(model: str) -> bytes:
    head = {"id": "chatcmpl-hostile", "object": "chat.completion.chunk", "created": 0, "model": model}
    return (
        b"data: "
        + json.dumps({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}).encode()
    )


async def _stream(model: str, mode: str, size: int) -> AsyncIterator[bytes]:
    if mode in ("stream_text", "stream_reasoning"):
        yield _chunk(model, b',"reasoning":"Let me think."' if mode == "stream_reasoning" else b"")
        yield _finish(model) + b"\n\n"
        yield b"data: [DONE]\n\n"
        return
    if mode == "stream_deep_first":
        yield _chunk(model, b',"x":' + _DEEP)
    elif mode == "stream_long_line":
        async for piece in _pieces(b"data: " + b"x" * size):
            yield piece
        return
    else:
        yield _chunk(model)
    if mode == "stream_deep_later":
        yield _chunk(model, b',"x":' + _DEEP)
    yield _chunk(model)
    yield b"data: [DONE]\n\n"


RICH_CHOICES = [
    {
        "index": 0,
        "message": {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city":"Oslo"}'},
                }
            ],
        },
        "logprobs": {"content": [{"token": "weather", "logprob": -0.01, "bytes": None, "top_logprobs": []}]},
        "finish_reason": "tool_calls",
    },
    {
        "index": 1,
        "message": {"role": "assistant", "content": None, "refusal": "I cannot say."},
        "finish_reason": "stop",
    },
]


def _rich(model: str) -> bytes:
    usage = {"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14}
    answer = {"id": "chatcmpl-rich", "object": "chat.completion", "created": 0, "model": model}
    return json.dumps({**answer, "choices": RICH_CHOICES, "usage": usage}).encode()


async def _chat(request: Request) -> Response:
    body: dict[str, Any] = await request.json()
    model, mode = str(body.get("model")), str(body.get("hostile", "ok"))
    size = int(body.get("size", 200_000))
    if body.get("stream"):
        return StreamingResponse(_stream(model, mode, size), media_type="text/event-stream")
    if mode == "deep":
        return Response(_answer(model, b',"x":' + _DEEP), media_type="application/json")
    if mode == "rich":
        return Response(_rich(model), media_type="application/json")
    if mode == "huge":
        padding = b',"x":"' + b"x" * size + b'"'
        return StreamingResponse(_pieces(_answer(model, padding)), media_type="application/json")
    return Response(_answer(model), media_type="application/json")


def create_hostile_app() -> Starlette:
    """The misbehaving upstream: ``POST /v1/chat/completions`` only."""
    return Starlette(routes=[Route("/v1/chat/completions", _chat, methods=["POST"])])
