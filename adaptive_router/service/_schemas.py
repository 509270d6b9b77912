"""Request bodies of the HTTP API, validated by pydantic, and the error shape clients get back.

The chat body is OpenAI's, with an optional ``route`` object for routing options. Fields we do
not know are kept and passed to the upstream as they are (providers add their own), except
``route``, which never leaves the router.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

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
MAX_GLOBS = 32  # per route.allow and per route.deny
MAX_GLOB_CHARS = 128
MAX_WILDCARD_GLOBS = 8  # per list: each costs a regex built and run per model id; exact ids cost nothing
MAX_TOKENS = 2**31 - 1  # larger than any context window; bigger numbers overflow downstream
Glob = Annotated[str, StringConstraints(min_length=1, max_length=MAX_GLOB_CHARS)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class WeightsIn(_Strict):
    latency: float = Field(0.0, ge=0, strict=True)
    cost: float = Field(0.0, ge=0, strict=True)
    quality: float = Field(0.0, ge=0, strict=True)

    @model_validator(mode="after")
    def _not_all_zero(self) -> WeightsIn:
        if self.latency + self.cost + self.quality <= 0:
            raise ValueError("weights must not all be zero")
        return self


class RouteOptions(_Strict):
    """Routing options: in a chat body's ``route`` object, or the top level of ``/route``."""

    priority: str | None = Field(None, description="speed, cost, quality, balanced, or a mode from settings")
    weights: WeightsIn | None = None
    max_latency_ms: float | None = Field(None, gt=0, strict=True)
    max_ttft_ms: float | None = Field(None, gt=0, strict=True)
    max_cost_usd: float | None = Field(None, ge=0, strict=True)
    allow: list[Glob] = Field(
        default_factory=list, max_length=MAX_GLOBS, description="model id globs to choose from"
    )
    deny: list[Glob] = Field(
        default_factory=list, max_length=MAX_GLOBS, description="model id globs never to use"
    )
    capabilities: list[
        Literal["tools", "json_mode", "structured_outputs", "vision", "reasoning", "streaming"]
    ] = Field(default_factory=list)
    fallback: bool = Field(True, description="try the next-best model when one fails")
    cache: bool = Field(False, description="allow a cached answer even at temperature > 0")

    @field_validator("allow", "deny")
    @classmethod
    def _few_wildcards(cls, globs: list[str]) -> list[str]:
        wild = sum(1 for glob in globs if "*" in glob or "?" in glob or "[" in glob)
        if wild > MAX_WILDCARD_GLOBS:
            raise ValueError(f"at most {MAX_WILDCARD_GLOBS} globs with wildcards (* ? [), got {wild}")
        return globs


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Role
    content: str | list[dict[str, Any]] | None = None

    @field_validator("content")
    @classmethod
    def _typed_parts(cls, content: Any) -> Any:
        for i, part in enumerate(content if isinstance(content, list) else ()):
            if not isinstance(part.get("type"), str):
                raise ValueError(f"content part {i} needs a string 'type' (text, image_url, ...)")
        return content

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
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS, strict=True)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS, strict=True)
    temperature: float | None = Field(None, ge=0, le=2, strict=True)
    top_p: float | None = Field(None, ge=0, le=1, strict=True)
    n: int | None = Field(None, ge=1, le=1, strict=True, description="one choice per request")
    stream: bool = Field(False, strict=True)
    stream_options: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    response_format: dict[str, Any] | None = None
    route: RouteOptions | None = None

    @field_validator("tools")
    @classmethod
    def _function_tools(cls, tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        for i, tool in enumerate(tools or ()):
            if not isinstance(tool.get("type", ""), str):
                raise ValueError(f"tools[{i}].type must be a string")
            function = tool.get("function")
            if function is not None and not (
                isinstance(function, dict) and isinstance(function.get("name"), str)
            ):
                raise ValueError(f"tools[{i}].function must be an object with a string 'name'")
        return tools

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
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)

    @model_validator(mode="after")
    def _one_input(self) -> RouteQuery:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("give exactly one of messages or prompt")
        if self.messages is not None and not self.messages:
            raise ValueError("messages must not be empty")
        return self


class CompleteRequest(RouteQuery):
    """``POST /complete``: route and complete in one call (the published design's shape)."""

    temperature: float | None = Field(None, ge=0, le=2, strict=True)


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
    weights = _scaled(opts.weights) if opts.weights else None
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


def _scaled(weights: WeightsIn) -> tuple[float, float, float]:
    """The weights over their largest, so that 1e308 three times cannot overflow a sum to inf."""
    top = max(weights.latency, weights.cost, weights.quality)
    return (weights.latency / top, weights.cost / top, weights.quality / top)


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
