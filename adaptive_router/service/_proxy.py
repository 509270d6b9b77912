"""``POST /v1/chat/completions``, plain and streamed: parse, hand to the pipeline, answer.

The work (admission, the decision, attempts with fallback, accounting, the response cache) is
the :class:`~adaptive_router.pipeline.Pipeline`'s; this module only turns bodies into calls and
calls' answers into HTTP (JSON, or server-sent events).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from .._json import dumps
from ..pipeline._pipeline import Call, Pipeline, Streamed, routing_info, with_cost
from ._access import known_model
from ._guards import prepare_globs
from ._http import COST_HEADER, answer_response, call_headers, read_call
from ._schemas import ChatCompletionRequest, route_request
from ._stream_tail import with_routing

__all__ = ["chat_completions"]

EVENT_STREAM = "text/event-stream"


async def chat_completions(request: Request) -> Response:
    running, api_key, body = await read_call(request)
    chat = ChatCompletionRequest.model_validate(body)
    known_model(chat.model, running.service.router)
    options = body.pop("route", None)  # routing options never leave the router
    route = route_request(
        chat.model,
        chat.route,
        messages=body["messages"],
        max_tokens=chat.answer_limit(),
        capabilities=chat.capabilities(),
        request_id=request.headers.get("x-request-id"),
    )
    pipeline = running.pipeline
    await prepare_globs(pipeline.catalogue, (*route.allow, *route.deny))
    call = pipeline.call(route, body=body, api_key=api_key, model=chat.model, stream=chat.stream)
    pipeline.consider_cache(
        call, options if isinstance(options, dict) else None, bool(chat.route and chat.route.cache)
    )
    cached = await pipeline.lookup(call)
    if cached is not None:
        return _cached(pipeline, call, cached, chat)
    if chat.stream:
        return _stream(pipeline, call, await pipeline.stream(call))
    await pipeline.complete(call)
    return answer_response(call, pipeline.routing(call), call_headers(call, pipeline.upstream_mode))


def _stream(pipeline: Pipeline, call: Call, streamed: Streamed) -> Response:
    headers = call_headers(call, pipeline.upstream_mode, attempts=streamed.attempts)
    events = with_routing(pipeline, call, streamed)  # the request id in the final chunk
    return StreamingResponse(_sse(events), media_type=EVENT_STREAM, headers=headers)


async def _sse(payloads: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    async for payload in payloads:
        yield b"data: " + payload + b"\n\n"


def _cached(pipeline: Pipeline, call: Call, data: dict[str, Any], chat: ChatCompletionRequest) -> Response:
    headers = {
        "x-router-model": str(data.get("model")),
        "x-router-attempts": "0",
        "x-router-decision-us": "0",
        "x-router-cache": "hit",
        "x-router-request-id": str(call.hit_id),
        "x-router-upstream": pipeline.upstream_mode,
        COST_HEADER: "0.0",
    }
    if isinstance(data.get("usage"), dict):  # a cached answer costs nothing this time
        data["usage"] = with_cost(data["usage"], 0.0)
        call.answer_json = None  # serialised again, with the new cost
    routing = {"request_id": call.hit_id, **routing_info(None, None, True, pipeline.upstream_mode)}
    routing["model"] = data.get("model")
    if chat.stream:
        include_usage = bool((chat.stream_options or {}).get("include_usage"))
        events = _replay(data, include_usage, routing)
        return StreamingResponse(_sse(events), media_type=EVENT_STREAM, headers=headers)
    return answer_response(call, routing, headers)


async def _replay(data: dict[str, Any], include_usage: bool, routing: dict[str, Any]) -> AsyncIterator[bytes]:
    """A cached completion as OpenAI's stream: per choice its role, then its message (text, a
    refusal, tool calls, with its log probabilities), then each choice's finish reason (the last
    with ``routing``), [usage,] [DONE]."""
    base = {
        "id": data.get("id", "chatcmpl-cached"),
        "object": "chat.completion.chunk",
        "created": data.get("created", int(time.time())),
        "model": data.get("model"),
    }
    choices = [c for c in data.get("choices") or [] if isinstance(c, dict)] or [{}]
    for n, choice in enumerate(choices):
        index = choice.get("index", n)
        role = {"index": index, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
        said = {"index": index, "delta": _said(choice), "finish_reason": None}
        if choice.get("logprobs") is not None:
            said["logprobs"] = choice["logprobs"]
        yield dumps({**base, "choices": [role]})
        yield dumps({**base, "choices": [said]})
    for n, choice in enumerate(choices):
        finish = {
            "index": choice.get("index", n),
            "delta": {},
            "finish_reason": choice.get("finish_reason", "stop"),
        }
        last = n == len(choices) - 1  # the request id, as a live stream's final chunk has it
        yield dumps({**base, "choices": [finish], **({"routing": routing} if last else {})})
    if include_usage and data.get("usage"):
        yield dumps({**base, "choices": [], "usage": data["usage"], "routing": routing})
    yield b"[DONE]"


def _said(choice: dict[str, Any]) -> dict[str, Any]:
    """What one choice's message said, as a stream delta: its text, and a refusal, reasoning or
    tool calls (numbered, as a stream numbers them) when it has them."""
    found = choice.get("message")
    message: dict[str, Any] = found if isinstance(found, dict) else {}
    said: dict[str, Any] = {"content": message.get("content") or ""}
    for key in ("refusal", "reasoning", "tool_calls"):
        if message.get(key):
            said[key] = message[key]
    if isinstance(said.get("tool_calls"), list):
        said["tool_calls"] = [
            {"index": i, **call} if isinstance(call, dict) else call
            for i, call in enumerate(said["tool_calls"])
        ]
    return said
