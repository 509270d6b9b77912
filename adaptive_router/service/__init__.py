"""The HTTP service: Starlette routes over the pipeline, one error map, the OpenAPI document."""

from __future__ import annotations

from ._app import app_from_environment, create_app, serve
from ._endpoints import (
    complete,
    feedback,
    health,
    list_models,
    list_models_openai,
    metrics_json,
    metrics_text,
    ready,
    route_only,
)
from ._error_map import ERROR_MAP, ErrorAnswer, error_answer, handle_error
from ._http import (
    JSON,
    answer_response,
    authorize,
    call_headers,
    json_response,
    read_call,
    read_json,
    router_headers,
    running,
)
from ._lifecycle import DeadlineHTTPProtocol
from ._openapi import docs_routes, openapi_spec
from ._proxy import chat_completions
from ._schemas import (
    ChatCompletionRequest,
    CompleteRequest,
    FeedbackRequest,
    RouteOptions,
    RouteQuery,
    error_body,
    first_error,
    required_capabilities,
)

__all__ = [
    "ERROR_MAP",
    "JSON",
    "ChatCompletionRequest",
    "CompleteRequest",
    "DeadlineHTTPProtocol",
    "ErrorAnswer",
    "FeedbackRequest",
    "RouteOptions",
    "RouteQuery",
    "answer_response",
    "app_from_environment",
    "authorize",
    "call_headers",
    "chat_completions",
    "complete",
    "create_app",
    "docs_routes",
    "error_answer",
    "error_body",
    "feedback",
    "first_error",
    "handle_error",
    "health",
    "json_response",
    "list_models",
    "list_models_openai",
    "metrics_json",
    "metrics_text",
    "openapi_spec",
    "read_call",
    "read_json",
    "ready",
    "required_capabilities",
    "route_only",
    "router_headers",
    "running",
    "serve",
]
