"""The upstream client: the only code that talks to model providers.

Every provider speaks the OpenAI chat-completions protocol: OpenRouter by default, and any named
endpoint from settings (vLLM, Ollama, llama.cpp, ...). One shared ``httpx.AsyncClient`` serves them
all; httpx errors, error statuses and error bodies become :mod:`adaptive_router._errors` here.

    providers = providers_from_settings(settings.upstream, settings.openrouter_key())
    client = UpstreamClient(providers, connect_timeout_s=5, read_timeout_s=60, max_connections=256)
    done = await client.complete("openai/gpt-4o-mini", body, timeout_s=30)

    async with client.stream("openai/gpt-4o-mini", body, timeout_s=10) as handle:
        await handle.start()              # status checked, first event in hand: fallback still possible
        async for payload in handle.events():
            ...                           # b'{"id": ...}' ... b"[DONE]"
    summary = handle.result()
"""

from __future__ import annotations

import asyncio
import collections
import functools
import time
import urllib.request
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal

import httpx

from .. import __version__
from .._errors import (
    UpstreamProtocolError,
    UpstreamStatusError,
)
from .._json import dumps
from ._answers import (
    Completion,
    beyond_text,
    completion_from,
    delta_text,
    finish_reason,
    kept_headers,
    map_error,
    parse_object,
    raise_for_payload,
    translated,
    usage_counts,
)
from ._limits import DEFAULT_LIMITS, Limits, read_response
from ._providers import APP_TITLE, Provider, pick_provider
from ._sse import SSEParser

__all__ = ["DONE", "USER_AGENT", "Completion", "StreamHandle", "UpstreamClient"]


DONE = b"[DONE]"
# A stream's top-level fields kept in its summary (as a plain answer has them).
_SUMMARY_KEYS = ("id", "created", "model", "system_fingerprint", "service_tier", "provider")
USER_AGENT = f"{APP_TITLE}/{__version__}"
_ROUTE_CACHE_SIZE = 4096


# ---------------------------------------------------------------------------------- client


def _env_proxies() -> bool:
    return any(k != "no" for k in urllib.request.getproxies())


def _default_transport(choice: str, max_connections: int) -> httpx.AsyncBaseTransport | None:
    """aiohttp's connections under httpx's API, httpx's own pool, or ``None`` for the client's.

    "auto" takes aiohttp (the ``speed`` extra) when it is installed and no proxy is set in the
    environment: httpx's client honours ``HTTPS_PROXY`` and the like, the aiohttp transport does not.
    """
    if _env_proxies() and choice != "aiohttp":
        return None  # the client builds its transports, proxies from the environment included
    if choice != "httpx":
        try:
            from ._aiohttp_transport import AiohttpTransport
        except ImportError as exc:
            if choice == "aiohttp":
                raise ImportError(
                    "upstream.http_client is 'aiohttp', which needs the 'speed' extra: "
                    "pip install 'adaptive-router[speed]'"
                ) from exc
        else:
            return AiohttpTransport(max_connections=max_connections)
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    return httpx.AsyncHTTPTransport(limits=limits, http2=False)


class UpstreamClient:
    """Chat completions against the configured providers over one shared connection pool.

        client = UpstreamClient(providers, connect_timeout_s=5, read_timeout_s=60, max_connections=256)
        try:
            done = await client.complete("openai/gpt-4o-mini", body, timeout_s=30)
        finally:
            await client.aclose()

    ``transport`` is the seam for tests (``httpx.MockTransport``); without one, ``http_client``
    picks the connections (see :func:`_default_transport`). ``clock`` measures latencies.
    """

    def __init__(
        self,
        providers: Sequence[Provider],
        *,
        connect_timeout_s: float,
        read_timeout_s: float,
        max_connections: int,
        transport: httpx.AsyncBaseTransport | None = None,
        http_client: Literal["auto", "httpx", "aiohttp"] = "auto",
        clock: Callable[[], float] = time.perf_counter,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self.providers = tuple(providers)
        self.limits = limits
        self._read_timeout_s = read_timeout_s
        self._clock = clock
        if transport is None:
            transport = _default_transport(http_client, max_connections)
        timeout = httpx.Timeout(
            connect=connect_timeout_s, read=read_timeout_s, write=read_timeout_s, pool=connect_timeout_s
        )
        self._timeouts = timeout.as_dict()
        self._extensions = {"timeout": self._timeouts}
        self._http = httpx.AsyncClient(
            timeout=timeout,
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            http2=False,
            follow_redirects=False,
            transport=transport,
        )
        # Straight to the transport: no redirects, auth, cookies or event hooks to run, and the
        # request built once here. Through the client only where it routes to proxies.
        self._transport = transport if transport is not None and not _env_proxies() else None
        self._post: Callable[..., Awaitable[tuple[int, Mapping[str, str], bytes]]] | None = getattr(
            self._transport, "post_bytes", None
        )
        # Bounded, and misses (UpstreamError) are not cached: lru_cache does not keep exceptions.
        self._resolve: Callable[[str], Provider] = functools.lru_cache(maxsize=_ROUTE_CACHE_SIZE)(
            functools.partial(pick_provider, self.providers)
        )
        self._targets: dict[tuple[str, bool], tuple[httpx.URL, dict[str, str]]] = {}
        # Adds the current trace context (``traceparent``) to each call's headers when tracing is on.
        self.inject: Callable[[dict[str, str]], None] | None = None

    def set_providers(self, providers: Sequence[Provider]) -> None:
        """Serve with ``providers`` from the next call on (a settings reload); the pool stays."""
        self.providers = tuple(providers)
        self._resolve = functools.lru_cache(maxsize=_ROUTE_CACHE_SIZE)(
            functools.partial(pick_provider, self.providers)
        )
        self._targets = {}

    def provider_for(self, model_id: str) -> Provider:
        """The provider that serves ``model_id`` (cached); ``UpstreamError`` when none does."""
        return self._resolve(model_id)

    async def complete(self, model_id: str, body: dict[str, Any], timeout_s: float) -> Completion:
        """One non-streamed call; connect, send and the whole answer together within ``timeout_s``."""
        provider = self.provider_for(model_id)
        started = self._clock()
        try:
            async with asyncio.timeout(timeout_s):
                if self._post is not None:  # aiohttp's connections, no httpx request or response
                    url, headers = self._target(provider, stream=False)
                    if self.inject is not None:
                        headers = self._traced(headers)
                    payload = self._payload(provider, model_id, body, stream=False)
                    status, raw_headers, content = await self._post(
                        str(url), headers, payload, self._timeouts, self.limits.answer_bytes
                    )
                else:
                    response = await self._send(self._request(provider, model_id, body, stream=False))
                    try:
                        content = await read_response(response, self.limits.answer_bytes)
                    finally:
                        await response.aclose()
                    status, raw_headers = response.status_code, response.headers
        except (TimeoutError, httpx.HTTPError, httpx.InvalidURL) as exc:
            raise map_error(model_id, exc) from exc
        latency = self._clock() - started
        return completion_from(
            model_id, provider.name, status, raw_headers, content, latency, self.limits.json_depth
        )

    def stream(self, model_id: str, body: dict[str, Any], timeout_s: float) -> StreamHandle:
        """A streamed call, not yet sent: ``await handle.start()`` sends it (see :class:`StreamHandle`)."""
        provider = self.provider_for(model_id)
        return StreamHandle(
            self._send,
            functools.partial(self._request, provider, model_id, body, stream=True),
            model_id=model_id,
            provider=provider.name,
            timeout_s=timeout_s,
            read_timeout_s=self._read_timeout_s,
            clock=self._clock,
            limits=self.limits,
        )

    async def _send(self, request: httpx.Request) -> httpx.Response:
        """The response with its body not yet read."""
        if self._transport is not None:
            return await self._transport.handle_async_request(request)
        return await self._http.send(request, stream=True)

    def _target(self, provider: Provider, stream: bool) -> tuple[httpx.URL, dict[str, str]]:
        """The URL and headers of a provider's calls, built once per provider and mode."""
        target = self._targets.get((provider.name, stream))
        if target is None:
            headers = {
                "User-Agent": USER_AGENT,
                "Accept-Encoding": "gzip, deflate",
                **provider.headers,
                "Accept": "text/event-stream" if stream else "application/json",
                "Content-Type": "application/json",
            }
            if provider.api_key:
                headers["Authorization"] = f"Bearer {provider.api_key}"
            target = self._targets[(provider.name, stream)] = (httpx.URL(provider.chat_url), headers)
        return target

    def _request(
        self, provider: Provider, model_id: str, body: dict[str, Any], *, stream: bool
    ) -> httpx.Request:
        url, headers = self._target(provider, stream)
        if self.inject is not None:
            headers = self._traced(headers)
        content = self._payload(provider, model_id, body, stream=stream)
        return httpx.Request("POST", url, headers=headers, content=content, extensions=self._extensions)

    def _traced(self, headers: dict[str, str]) -> dict[str, str]:
        traced = dict(headers)  # the cached headers stay as they are
        assert self.inject is not None
        self.inject(traced)
        return traced

    @staticmethod
    def _payload(provider: Provider, model_id: str, body: dict[str, Any], *, stream: bool) -> bytes:
        payload = {**body, "model": provider.upstream_model(model_id), "stream": stream}
        if stream:
            options = body.get("stream_options")
            payload["stream_options"] = {
                **(options if isinstance(options, dict) else {}),
                "include_usage": True,
            }
        else:
            payload.pop("stream_options", None)  # OpenAI rejects stream_options without stream
        return dumps(payload)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> UpstreamClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


# ---------------------------------------------------------------------------------- streaming


class StreamHandle:
    """One streamed call. ``start()`` sends it, checks the status and waits (within ``timeout_s``)
    for the first data event, so that a caller can still fall back before its own client has seen
    a byte. ``events()`` then yields each event's raw ``data`` (JSON bytes, and ``b"[DONE]"`` last).

    Errors: ``start()`` and ``events()`` raise :class:`UpstreamError` subclasses. An error event in
    the stream is raised where it occurs; so is a stream that ends without ``[DONE]``
    (``UpstreamProtocolError``) and a gap of more than ``read_timeout_s`` between data events
    (``UpstreamTimeout``: keep-alive comments do not count). Use ``async with`` or ``aclose()``;
    cancelling the task that iterates ``events()`` closes the upstream response as well.
    """

    def __init__(
        self,
        send: Callable[[httpx.Request], Awaitable[httpx.Response]],
        build: Callable[[], httpx.Request],
        *,
        model_id: str,
        provider: str,
        timeout_s: float,
        read_timeout_s: float,
        clock: Callable[[], float],
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self.model_id = model_id
        self._limits = limits
        self.provider = provider
        self.status = 0
        self.headers: dict[str, str] = {}
        self.ttft_s: float | None = None
        self.done = False
        self.usage: dict[str, Any] | None = None
        self._send, self._build, self._clock = send, build, clock
        self._timeout_s, self._read_timeout_s = timeout_s, read_timeout_s
        self._parser = SSEParser(limits.event_bytes)
        self._pending: collections.deque[bytes] = collections.deque()
        self._head_checked = False
        self._summary: dict[str, Any] = {}
        self._text: list[str] = []
        self._finish_reason: str | None = None
        self._beyond_text = False
        self._headed = False
        self._response: httpx.Response | None = None
        self._chunks: AsyncIterator[bytes] | None = None
        self._started_at: float | None = None
        self._ended_at: float | None = None
        self._iterating = False

    async def start(self) -> None:
        if self._started_at is not None:
            raise RuntimeError("start() may be called once")
        self._started_at = self._clock()
        try:
            async with translated(self.model_id, self._timeout_s):
                self._response = await self._send(self._build())
                await self._check_response(self._response)
                self._chunks = self._response.aiter_bytes()
                first = await self._pull()
            if not first:
                raise UpstreamProtocolError(self.model_id, "stream ended before its first event")
            self._pending.extend(first)
            self._observe(self._pending[0])  # an error as the first event still allows a fallback
            self._head_checked = True
        except BaseException:
            await self.aclose()
            raise

    async def events(self) -> AsyncGenerator[bytes, None]:
        if self._chunks is None or self._iterating:
            raise RuntimeError("events() needs a successful start(), and may be iterated once")
        self._iterating = True
        try:
            while True:
                while self._pending:
                    payload = self._pending.popleft()
                    if self._head_checked:
                        self._head_checked = False
                    else:
                        self._observe(payload)
                    if self.done:
                        await self.aclose()  # nothing follows [DONE]: free the connection now
                        yield payload
                        return
                    yield payload
                async with translated(self.model_id, self._read_timeout_s):
                    batch = await self._pull()
                if not batch:
                    raise UpstreamProtocolError(self.model_id, "stream ended without [DONE]")
                self._pending.extend(batch)
        finally:
            await self.aclose()

    def result(self) -> Completion:
        """What the stream has delivered so far; complete once ``done`` (``[DONE]`` arrived)."""
        started = self._started_at if self._started_at is not None else self._clock()
        ended = self._ended_at if self._ended_at is not None else self._clock()
        prompt, completion, cost = usage_counts(self.usage)
        return Completion(
            model_id=self.model_id,
            provider=self.provider,
            status=self.status,
            data=dict(self._summary),
            latency_s=ended - started,
            ttft_s=self.ttft_s,
            prompt_tokens=prompt,
            completion_tokens=completion,
            cost_usd=cost,
            headers=dict(self.headers),
            finish_reason=self._finish_reason,
            done=self.done,
            text="".join(self._text),
            beyond_text=self._beyond_text,
        )

    async def aclose(self) -> None:
        """Close the upstream response (idempotent)."""
        if self._ended_at is None:
            self._ended_at = self._clock()
        chunks, self._chunks = self._chunks, None
        if isinstance(chunks, AsyncGenerator):
            await chunks.aclose()
        if self._response is not None:
            await self._response.aclose()

    async def __aenter__(self) -> StreamHandle:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _check_response(self, response: httpx.Response) -> None:
        self.status = response.status_code
        self.headers = kept_headers(response.headers)
        if not response.is_success:
            body = await read_response(response, self._limits.answer_bytes)
            raise UpstreamStatusError(self.model_id, response.status_code, body, self.headers)
        media_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type == "application/json":  # an error body, or a server that ignored stream=true
            raw = await read_response(response, self._limits.answer_bytes)
            data = parse_object(self.model_id, raw, self._limits.json_depth)
            raise_for_payload(self.model_id, data, raw, self.headers)
            raise UpstreamProtocolError(self.model_id, "asked for a stream, got one JSON answer")

    async def _pull(self) -> list[bytes]:
        """Read until at least one non-empty data event is complete; [] at the end of the body."""
        if self._chunks is None:
            raise RuntimeError("the stream is closed")
        while True:
            try:
                chunk = await anext(self._chunks)
            except StopAsyncIteration:
                return []
            try:
                events = [event for event in self._parser.feed(chunk) if event]
            except ValueError as exc:  # a line or event over the size cap
                raise httpx.DecodingError(str(exc)) from exc
            if events:
                if self.ttft_s is None and self._started_at is not None:
                    self.ttft_s = self._clock() - self._started_at
                return events

    def _observe(self, payload: bytes) -> None:
        if payload == DONE:
            self.done = True
            return
        chunk = parse_object(self.model_id, payload, self._limits.json_depth)
        raise_for_payload(self.model_id, chunk, payload, self.headers)
        if not self._headed:  # the first chunk that names the answer names it for the stream
            self._summary.update((key, chunk[key]) for key in _SUMMARY_KEYS if key in chunk)
            self._headed = "id" in chunk
        if not self._beyond_text:
            self._beyond_text = beyond_text(chunk)
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
            self._summary["usage"] = self.usage
        reason = finish_reason(chunk)
        if reason is not None:
            self._finish_reason = reason
        piece = delta_text(chunk)
        if piece:
            self._text.append(piece)
