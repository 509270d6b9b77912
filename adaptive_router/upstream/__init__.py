"""Calling models: providers, the OpenAI-compatible client (plain and streamed), and execution
with fallback, timeouts and circuit breakers."""

from __future__ import annotations

from ._aiohttp_transport import AiohttpTransport
from ._client import DONE, USER_AGENT, Completion, StreamHandle, UpstreamClient
from ._execution import Attempt, Breakers, Executor, Result
from ._providers import APP_TITLE, APP_URL, Provider, pick_provider, providers_from_settings
from ._sse import SSEParser

__all__ = [
    "APP_TITLE",
    "APP_URL",
    "DONE",
    "USER_AGENT",
    "AiohttpTransport",
    "Attempt",
    "Breakers",
    "Completion",
    "Executor",
    "Provider",
    "Result",
    "SSEParser",
    "StreamHandle",
    "UpstreamClient",
    "pick_provider",
    "providers_from_settings",
]
