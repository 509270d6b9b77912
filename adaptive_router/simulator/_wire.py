"""The simulated upstream's wire format: OpenAI's chat request shape, validated, and OpenAI error
bodies, as a real server writes them."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from starlette.responses import Response

from ._scenario import loc_key

__all__ = ["ChatRequest", "bad_request", "error_response"]


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    role: str = Field(min_length=1)
    content: Any = None

    @field_validator("content")
    @classmethod
    def _content_shape(cls, value: Any) -> Any:
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, list) and all(isinstance(part, dict) for part in value):
            return value
        raise ValueError("must be a string, a list of content parts, or null")


class _StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    include_usage: bool = False


class ChatRequest(BaseModel):
    # Unknown OpenAI parameters (top_p, tools, ...) are accepted and ignored, as a server would.
    model_config = ConfigDict(extra="allow", strict=True)

    model: str = Field(min_length=1)
    messages: list[_Message] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    n: int | None = Field(default=None, ge=1, le=1)  # one choice only
    stream: bool | None = None
    stream_options: _StreamOptions | None = Field(default=None, validate_default=True)

    @field_validator("stream_options")
    @classmethod
    def _only_when_streaming(
        cls, value: _StreamOptions | None, info: ValidationInfo
    ) -> _StreamOptions | None:
        if value is not None and not info.data.get("stream"):
            raise ValueError("only allowed when 'stream' is true")
        return value


def error_response(
    status: int,
    message: str,
    type_: str,
    param: str | None = None,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return Response(json.dumps(body), status, headers=headers, media_type="application/json")


def bad_request(exc: ValidationError) -> Response:
    err = exc.errors()[0]
    param = loc_key(err["loc"]) or None
    if err["type"] == "json_invalid":
        message = f"We could not parse the JSON body of your request: {err['msg']}."
    elif param is None:
        message = "The request body must be a JSON object."
    elif err["type"] == "missing":
        message = f"Missing required parameter: '{param}'."
    else:
        message = f"Invalid value for '{param}': {err['msg'].removeprefix('Value error, ')}."
    return error_response(400, message, "invalid_request_error", param)
