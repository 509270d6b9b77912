"""Request bodies of the HTTP API, validated by pydantic, and the error shape clients get back.

The chat body is OpenAI's, with an optional ``route`` object for routing options. Fields we do
not know are kept and passed to the upstream as they are (providers add their own), except
``route``, which never leaves the router.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .._errors import RequestError
from ..core._decision import RouteRequest

__all__ = [
    "ChatCompletionRequest",
    "CompleteRequest",
    "FeedbackRequest",
    "RouteOptions",
    "RouteQuery",
    "error_body",
    "first_error",
    "required_capabilities",
]

Role = Literal["system", "developer", "user", "assistant", "tool", "function"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class WeightsIn(_Strict):
    latency: float = Field(0.0, ge=0)
    cost: float = Field(0.0, ge=0)
    quality: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _not_all_zero(self) -> WeightsIn:
        if self.latency + self.cost + self.quality <= 0:
            raise ValueError("weights must not all be zero")
        return self


class RouteOptions(_Strict):
    """Routing options: in a chat body's ``route`` object, or the top level of ``/route``."""

    priority: str | None = Field(None, description="speed, cost, quality, balanced, or a mode from settings")
    weights: WeightsIn | None = None
    max_latency_ms: float | None = Field(None, gt=0)
    max_ttft_ms: float | None = Field(None, gt=0)
    max_cost_usd: float | None = Field(None, ge=0)
    allow: list[str] = Field(default_factory=list, description="model id globs to choose from")
    deny: list[str] = Field(default_factory=list, description="model id globs never to use")
    capabilities: list[
        Literal["tools", "json_mode", "structured_outputs", "vision", "reasoning", "streaming"]
    ] = Field(default_factory=list)
    fallback: bool = Field(True, description="try the next-best model when one fails")
    cache: bool = Field(False, description="allow a cached answer even at temperature > 0")


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Role
    content: str | list[dict[str, Any]] | None = None

    @model_validator(mode="after")
    def _content_present(self) -> Message:
        if self.content is None and self.role not in ("assistant", "tool", "function"):
            raise ValueError(f"a {self.role} message needs content")
        return self


class ChatCompletionRequest(BaseModel):
    """OpenAI's chat completion body; ``model`` may be ``auto``, ``auto:<mode>`` or a model id."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    model: str = Field("auto", min_length=1)
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, strict=True)
    max_completion_tokens: int | None = Field(None, ge=1, strict=True)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    n: int | None = Field(None, ge=1, le=1, strict=True, description="one choice per request")
    stream: bool = Field(False, strict=True)
    stream_options: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    response_format: dict[str, Any] | None = None
    route: RouteOptions | None = None

    def answer_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def capabilities(self) -> frozenset[str]:
        """What the body itself requires of a model: tools, images, JSON output."""
        return required_capabilities(self.messages, self.tools, self.response_format, self.route)


class RouteQuery(RouteOptions):
    """``POST /route``: the decision alone. Either ``messages`` or ``prompt``."""

    messages: list[Message] | None = None
    prompt: str | None = Field(None, min_length=1)
    model: str = "auto"
    max_tokens: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _one_input(self) -> RouteQuery:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("give exactly one of messages or prompt")
        if self.messages is not None and not self.messages:
            raise ValueError("messages must not be empty")
        return self


class CompleteRequest(RouteQuery):
    """``POST /complete``: route and complete in one call (the published design's shape)."""

    temperature: float | None = Field(None, ge=0, le=2)


class FeedbackRequest(_Strict):
    request_id: str = Field(min_length=1, max_length=200)
    score: float = Field(ge=0, le=1)

    @field_validator("score", mode="before")
    @classmethod
    def _number(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("score must be a number in [0, 1]")
        return value


_NO_OPTIONS = RouteOptions.model_validate({})  # read, never changed: the defaults of a body without ``route``


def required_capabilities(
    messages: list[Message],
    tools: list[Any] | None = None,
    response_format: dict[str, Any] | None = None,
    route: RouteOptions | None = None,
) -> frozenset[str]:
    """Capabilities a body needs: its route's list, plus tools, image parts and JSON output."""
    caps = set(route.capabilities) if route else set()
    if tools:
        caps.add("tools")
    kind = (response_format or {}).get("type")
    if kind == "json_object":
        caps.add("json_mode")
    elif kind == "json_schema":
        caps.add("structured_outputs")
    if any(
        isinstance(m.content, list) and any(p.get("type") == "image_url" for p in m.content) for m in messages
    ):
        caps.add("vision")
    return frozenset(caps)


def route_request(
    model: str,
    options: RouteOptions | None,
    *,
    messages: list[dict[str, Any]] | None = None,
    prompt: str | None = None,
    max_tokens: int | None = None,
    capabilities: frozenset[str] = frozenset(),
    request_id: str | None = None,
) -> RouteRequest:
    """The router's view of a request: ``model`` is ``auto``, ``auto:<mode>`` or a model id."""
    opts = options or _NO_OPTIONS
    mode = opts.priority
    pinned: str | None = None
    if model == "auto":
        pass
    elif model.startswith("auto:"):
        if mode is not None and mode != model[5:]:
            raise RequestError("route.priority", f"conflicts with model {model!r}")
        mode = model[5:] or None
    else:
        pinned = model
    weights = (opts.weights.latency, opts.weights.cost, opts.weights.quality) if opts.weights else None
    return RouteRequest(
        messages=messages,
        prompt=prompt,
        max_tokens=max_tokens,
        mode=mode,
        weights=weights,
        max_latency_ms=opts.max_latency_ms,
        max_ttft_ms=opts.max_ttft_ms,
        max_cost_usd=opts.max_cost_usd,
        capabilities=capabilities | frozenset(opts.capabilities),
        allow=tuple(opts.allow),
        deny=tuple(opts.deny),
        model=pinned,
        fallback=opts.fallback,
        request_id=request_id,
    )


_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "none", "literal", "tuple"})


def first_error(exc: ValidationError) -> tuple[str, str]:
    """The dotted field path and message of the first validation error.

    Pydantic puts the union branch it tried into the path (``content.str``,
    ``content.list[dict[str,any]]``); those are not fields, so they are left out.
    """
    error = exc.errors(include_url=False)[0]
    parts = [
        str(p)
        for p in error["loc"]
        if isinstance(p, int) or (_FIELD.fullmatch(str(p)) and p not in _TYPE_TAGS)
    ]
    message = error["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    return ".".join(parts) or "body", message


def error_body(
    message: str, param: str | None = None, kind: str = "invalid_request_error", code: str | None = None
) -> dict[str, Any]:
    """OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
