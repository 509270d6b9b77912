from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from adaptive_router import (
    ConfigError,
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamStatusError,
    UpstreamTimeout,
)
from adaptive_router._settings import ProviderSettings, UpstreamSettings
from adaptive_router.upstream import (
    APP_TITLE,
    APP_URL,
    Completion,
    Provider,
    SSEParser,
    StreamHandle,
    UpstreamClient,
    pick_provider,
    providers_from_settings,
)
from adaptive_router.upstream._text import streamed_answer

KEY = "sk-or-v1-secret-test-key"
MODEL = "openai/gpt-4o-mini"
BODY: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}], "temperature": 0}
OPENROUTER = Provider(
    name="openrouter",
    base_url="https://openrouter.test/api/v1",
    api_key=KEY,
    headers={"HTTP-Referer": APP_URL, "X-Title": APP_TITLE},
)
OLLAMA = Provider(
    name="ollama", base_url="http://127.0.0.1:11434/v1/", models=("ollama/*",), strip_prefix=True
)

Handler = Callable[[httpx.Request], Any]  # plain or async, as httpx.MockTransport takes


def answer(content: str = "hello", usage: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "id": "gen-1",
        "object": "chat.completion",
        "model": MODEL,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
        ],
        "usage": usage
        if usage is not None
        else {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
    }


def chunk(content: str | None = None, *, finish: str | None = None, **extra: Any) -> bytes:
    delta = {} if content is None else {"content": content}
    data = {"id": "gen-1", "object": "chat.completion.chunk", "model": MODEL, **extra}
    data.setdefault("choices", [{"index": 0, "delta": delta, "finish_reason": finish}])
    return b"data: " + json.dumps(data).encode() + b"\n\n"


USAGE_CHUNK = chunk(choices=[], usage={"prompt_tokens": 7, "completion_tokens": 2, "cost": 0.00042})


class Script(httpx.AsyncByteStream):
    """A response body: bytes to send, and floats to sleep for; records whether it was closed."""

    def __init__(self, *items: bytes | float) -> None:
        self.items = items
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for item in self.items:
            if isinstance(item, float):
                await asyncio.sleep(item)
            else:
                yield item

    async def aclose(self) -> None:
        self.closed = True


def sse(*items: bytes | float) -> tuple[Script, Callable[[httpx.Request], httpx.Response]]:
    script = Script(*items)

    def respond(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=script)

    return script, respond


def run_with(
    handler: Handler,
    scenario: Callable[[UpstreamClient], Awaitable[Any]],
    providers: tuple[Provider, ...] = (OLLAMA, OPENROUTER),
    read_timeout_s: float = 5.0,
) -> Any:
    async def main() -> Any:
        client = UpstreamClient(
            providers,
            connect_timeout_s=1.0,
            read_timeout_s=read_timeout_s,
            max_connections=4,
            transport=httpx.MockTransport(handler),
        )
        async with client:
            return await asyncio.wait_for(scenario(client), timeout=10)

    return asyncio.run(main())


def capture(
    response: httpx.Response,
) -> tuple[list[httpx.Request], Callable[[httpx.Request], httpx.Response]]:
    seen: list[httpx.Request] = []

    def respond(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return response

    return seen, respond


def complete_error(response_or_handler: Any) -> UpstreamError:
    handler = response_or_handler
    if isinstance(response_or_handler, httpx.Response):
        _, handler = capture(response_or_handler)

    async def scenario(client: UpstreamClient) -> UpstreamError:
        with pytest.raises(UpstreamError) as info:
            await client.complete(MODEL, BODY, timeout_s=0.5)
        return info.value

    error: UpstreamError = run_with(handler, scenario)
    return error


def collect(handle: StreamHandle) -> Callable[[UpstreamClient], Awaitable[list[bytes]]]:
    async def scenario(client: UpstreamClient) -> list[bytes]:
        await handle.start()
        return [payload async for payload in handle.events()]

    return scenario


def stream_events(
    respond: Callable[[httpx.Request], httpx.Response], timeout_s: float = 1.0, read_timeout_s: float = 5.0
) -> tuple[list[bytes], StreamHandle]:
    handles: list[StreamHandle] = []

    async def scenario(client: UpstreamClient) -> list[bytes]:
        handle = client.stream(MODEL, BODY, timeout_s=timeout_s)
        handles.append(handle)
        async with handle:
            return await collect(handle)(client)

    events: list[bytes] = run_with(respond, scenario, read_timeout_s=read_timeout_s)
    return events, handles[0]


def stream_error(
    respond: Callable[[httpx.Request], httpx.Response], timeout_s: float = 1.0, read_timeout_s: float = 5.0
) -> tuple[UpstreamError, list[bytes]]:
    received: list[bytes] = []

    async def scenario(client: UpstreamClient) -> UpstreamError:
        with pytest.raises(UpstreamError) as info:
            async with client.stream(MODEL, BODY, timeout_s=timeout_s) as handle:
                await handle.start()
                async for payload in handle.events():
                    received.append(payload)
        return info.value

    error: UpstreamError = run_with(respond, scenario, read_timeout_s=read_timeout_s)
    return error, received


# ---------------------------------------------------------------------------------- providers


def test_providers_from_settings_named_first_then_openrouter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_TEST_KEY", "vllm-key")
    upstream = UpstreamSettings(
        openrouter_base_url="https://openrouter.test/api/v1",
        providers={
            "vllm": ProviderSettings(
                base_url="http://127.0.0.1:8001/v1",
                api_key_env="VLLM_TEST_KEY",
                models=["meta-llama/*"],
                headers={"X-Team": "a"},
            ),
            "ollama": ProviderSettings(
                base_url="http://127.0.0.1:11434/v1", models=["ollama/*"], strip_prefix=True
            ),
        },
    )
    providers = providers_from_settings(upstream, KEY)
    assert [p.name for p in providers] == ["vllm", "ollama", "openrouter"]
    vllm, ollama, openrouter = providers
    assert (vllm.api_key, vllm.models, dict(vllm.headers)) == ("vllm-key", ("meta-llama/*",), {"X-Team": "a"})
    assert ollama.api_key is None and ollama.strip_prefix
    assert openrouter.base_url == "https://openrouter.test/api/v1" and openrouter.api_key == KEY
    assert openrouter.models == ("*",)
    assert openrouter.headers["HTTP-Referer"] == APP_URL and openrouter.headers["X-Title"] == APP_TITLE


def test_providers_from_settings_without_key_has_no_openrouter() -> None:
    upstream = UpstreamSettings(providers={"local": ProviderSettings(base_url="http://127.0.0.1:8080/v1")})
    assert [p.name for p in providers_from_settings(upstream, None)] == ["local"]
    assert providers_from_settings(UpstreamSettings(), "") == []


def test_pick_provider_first_matching_glob_wins() -> None:
    providers = [OLLAMA, OPENROUTER]
    assert pick_provider(providers, "ollama/llama3") is OLLAMA
    assert pick_provider(providers, "anthropic/claude-3.5-sonnet") is OPENROUTER
    with pytest.raises(UpstreamError, match="mistral/tiny"):
        pick_provider([OLLAMA], "mistral/tiny")


def test_provider_upstream_model_strips_up_to_first_slash() -> None:
    assert OLLAMA.upstream_model("ollama/llama3") == "llama3"
    assert OLLAMA.upstream_model("ollama/library/qwen:7b") == "library/qwen:7b"
    assert OPENROUTER.upstream_model(MODEL) == MODEL
    assert OLLAMA.chat_url == "http://127.0.0.1:11434/v1/chat/completions"


def test_provider_repr_hides_key_and_headers() -> None:
    assert KEY not in repr(OPENROUTER) and "X-Title" not in repr(OPENROUTER)


def test_provider_rejects_key_unfit_for_a_header_without_echoing_it() -> None:
    for bad in ("sk-secret\nInjected: 1", "sk-sécret", "sk secret"):
        with pytest.raises(ConfigError) as info:
            Provider(name="vllm", base_url="http://127.0.0.1:8001/v1", api_key=bad)
        assert info.value.key == "upstream.providers.vllm.api_key" and "secret" not in str(info.value)
    with pytest.raises(ConfigError, match=r"headers\.X-Team"):
        Provider(name="vllm", base_url="http://127.0.0.1:8001/v1", headers={"X-Team": "a\r\nb"})


def test_client_provider_for_caches_and_does_not_cache_misses() -> None:
    async def scenario(client: UpstreamClient) -> None:
        assert client.provider_for("ollama/a") is OLLAMA
        assert client.provider_for("ollama/a") is OLLAMA
        for _ in range(2):
            with pytest.raises(UpstreamError):
                client.provider_for("other/b")

    run_with(capture(httpx.Response(200))[1], scenario, providers=(OLLAMA,))


# ---------------------------------------------------------------------------------- complete()


def test_complete_sends_openai_request_to_openrouter() -> None:
    seen, respond = capture(httpx.Response(200, json=answer()))
    body = {**BODY, "model": "ignored", "stream": True, "stream_options": {"include_usage": True}}
    run_with(respond, lambda client: client.complete(MODEL, body, timeout_s=1.0))
    (request,) = seen
    assert request.method == "POST"
    assert str(request.url) == "https://openrouter.test/api/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["http-referer"] == APP_URL and request.headers["x-title"] == APP_TITLE
    assert request.headers["content-type"] == "application/json"
    sent = json.loads(request.content)
    assert sent == {**BODY, "model": MODEL, "stream": False}


def test_complete_strips_prefix_and_sends_no_auth_to_local_server() -> None:
    seen, respond = capture(httpx.Response(200, json=answer()))
    done = run_with(respond, lambda client: client.complete("ollama/llama3", BODY, timeout_s=1.0))
    (request,) = seen
    assert str(request.url) == "http://127.0.0.1:11434/v1/chat/completions"
    assert "authorization" not in request.headers
    assert json.loads(request.content)["model"] == "llama3"
    assert done.provider == "ollama" and done.model_id == "ollama/llama3"


def test_complete_parses_usage_cost_and_headers() -> None:
    usage = {"prompt_tokens": 194, "completion_tokens": 2, "total_tokens": 196, "cost": 0.00095}
    headers = {"x-generation-id": "gen-9", "x-ratelimit-remaining-requests": "9", "set-cookie": "a=b"}
    _, respond = capture(httpx.Response(200, json=answer("yes", usage), headers=headers))
    done: Completion = run_with(respond, lambda client: client.complete(MODEL, BODY, timeout_s=1.0))
    assert (done.status, done.prompt_tokens, done.completion_tokens, done.cost_usd) == (200, 194, 2, 0.00095)
    assert done.data["choices"][0]["message"]["content"] == "yes"
    assert done.ttft_s is None and done.latency_s >= 0 and done.finish_reason == "stop" and done.done
    assert (
        done.headers["x-generation-id"] == "gen-9" and done.headers["x-ratelimit-remaining-requests"] == "9"
    )
    assert "set-cookie" not in done.headers


def test_complete_without_reported_cost_leaves_pricing_to_caller() -> None:
    _, respond = capture(httpx.Response(200, json=answer(usage={})))
    done: Completion = run_with(respond, lambda client: client.complete(MODEL, BODY, timeout_s=1.0))
    assert (done.prompt_tokens, done.completion_tokens, done.cost_usd) == (None, None, None)


# ---------------------------------------------------------------------------------- error mapping


def test_complete_connect_error_maps_to_connect_error() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    error = complete_error(refuse)
    assert isinstance(error, UpstreamConnectError) and error.retryable and error.model == MODEL
    assert isinstance(error.__cause__, httpx.ConnectError)


def test_complete_connect_timeout_maps_to_connect_error() -> None:
    def slow_connect(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectTimeout("timed out", request=request)

    assert isinstance(complete_error(slow_connect), UpstreamConnectError)


def test_complete_real_refused_loopback_port_maps_to_connect_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    local = Provider(name="local", base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY)

    async def main() -> UpstreamError:
        # An explicit transport: no proxy from the environment, so nothing leaves 127.0.0.1.
        client = UpstreamClient(
            [local],
            connect_timeout_s=1.0,
            read_timeout_s=1.0,
            max_connections=1,
            transport=httpx.AsyncHTTPTransport(),
        )
        async with client:
            with pytest.raises(UpstreamError) as info:
                await client.complete("any/model", BODY, timeout_s=2.0)
            return info.value

    error = asyncio.run(main())
    assert isinstance(error, UpstreamConnectError)
    assert KEY not in str(error) and KEY not in repr(error)


def test_complete_read_timeout_maps_to_timeout() -> None:
    def stall(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    assert isinstance(complete_error(stall), UpstreamTimeout)


def test_complete_slow_upstream_times_out() -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(5)
        return httpx.Response(200, json=answer())

    error = complete_error(slow)
    assert isinstance(error, UpstreamTimeout) and error.retryable


def test_complete_trickling_body_cannot_outlast_timeout() -> None:
    # One byte every 20 ms resets every per-read timeout; the attempt's own bound must still hold.
    script = Script(*[item for _ in range(500) for item in (b" ", 0.02)])

    def trickle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "application/json"}, stream=script)

    assert isinstance(complete_error(trickle), UpstreamTimeout)
    assert script.closed


def test_complete_dropped_connection_maps_to_protocol_error() -> None:
    def drop(request: httpx.Request) -> httpx.Response:
        raise httpx.RemoteProtocolError("peer closed connection", request=request)

    error = complete_error(drop)
    assert isinstance(error, UpstreamProtocolError) and error.retryable


def test_complete_500_is_retryable_status_error() -> None:
    error = complete_error(httpx.Response(500, text="boom"))
    assert isinstance(error, UpstreamStatusError)
    assert (error.status_code, error.body, error.retryable) == (500, b"boom", True)


def test_complete_429_is_retryable_and_keeps_retry_after() -> None:
    body = {"error": {"code": 429, "message": "rate limited"}}
    error = complete_error(httpx.Response(429, json=body, headers={"retry-after": "7"}))
    assert isinstance(error, UpstreamStatusError)
    assert error.status_code == 429 and error.retryable and error.headers["retry-after"] == "7"


def test_complete_400_is_not_retryable_and_keeps_body() -> None:
    body = {"error": {"code": 400, "message": "messages: required"}}
    error = complete_error(httpx.Response(400, json=body))
    assert isinstance(error, UpstreamStatusError) and not error.retryable
    assert json.loads(error.body) == body


def test_complete_error_object_in_200_answer_maps_by_its_code() -> None:
    body = {"error": {"code": 502, "message": "provider returned error", "metadata": {"provider_name": "x"}}}
    error = complete_error(httpx.Response(200, json=body))
    assert isinstance(error, UpstreamStatusError) and error.status_code == 502 and error.retryable
    assert json.loads(error.body) == body


def test_complete_error_inside_choice_is_an_error() -> None:
    body = answer()
    body["choices"][0].update(finish_reason="error", error={"code": 502, "message": "high demand"})
    error = complete_error(httpx.Response(200, json=body))
    assert isinstance(error, UpstreamStatusError) and error.status_code == 502


def test_complete_error_without_status_code_is_protocol_error() -> None:
    error = complete_error(httpx.Response(200, json={"error": {"code": "server_error", "message": "oops"}}))
    assert isinstance(error, UpstreamProtocolError) and error.retryable and "oops" in str(error)


def test_complete_non_json_answer_is_protocol_error() -> None:
    assert isinstance(complete_error(httpx.Response(200, text="<html>gateway</html>")), UpstreamProtocolError)


def test_complete_answer_without_choices_is_protocol_error() -> None:
    assert isinstance(
        complete_error(httpx.Response(200, json={"id": "x", "choices": []})), UpstreamProtocolError
    )
    assert isinstance(complete_error(httpx.Response(200, json=[1, 2])), UpstreamProtocolError)


def test_complete_errors_never_carry_the_key() -> None:
    for response in (
        httpx.Response(401, json={"error": {"code": 401, "message": "bad key"}}),
        httpx.Response(503),
    ):
        error = complete_error(response)
        assert isinstance(error, UpstreamStatusError)
        assert KEY not in str(error) and KEY not in repr(error) and KEY not in repr(error.headers)
        assert KEY.encode() not in error.body


def test_complete_unknown_model_raises_upstream_error() -> None:
    seen, respond = capture(httpx.Response(200, json=answer()))

    async def scenario(client: UpstreamClient) -> None:
        with pytest.raises(UpstreamError, match="nobody/serves-this"):
            await client.complete("nobody/serves-this", BODY, timeout_s=1.0)

    run_with(respond, scenario, providers=(OLLAMA,))
    assert seen == []


# ---------------------------------------------------------------------------------- streaming


def test_stream_yields_events_in_order_and_records_usage() -> None:
    script, respond = sse(
        b": OPENROUTER PROCESSING\n\n",
        chunk("Hel"),
        0.01,
        chunk("lo", finish="stop"),
        USAGE_CHUNK,
        b"data: [DONE]\n\n",
    )
    events, handle = stream_events(respond)
    assert [json.loads(e)["choices"][0]["delta"].get("content") for e in events[:2]] == ["Hel", "lo"]
    assert events[-1] == b"[DONE]" and len(events) == 4
    summary = handle.result()
    assert summary.done and handle.done and summary.finish_reason == "stop"
    assert (summary.prompt_tokens, summary.completion_tokens, summary.cost_usd) == (7, 2, 0.00042)
    assert summary.ttft_s is not None and 0 <= summary.ttft_s <= summary.latency_s
    assert summary.data["id"] == "gen-1" and summary.status == 200
    assert script.closed


def test_stream_request_asks_for_stream_and_usage() -> None:
    seen: list[httpx.Request] = []
    _, respond = sse(chunk("x"), b"data: [DONE]\n\n")

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return respond(request)

    body = {**BODY, "stream_options": {"other": 1}}

    async def scenario(client: UpstreamClient) -> list[bytes]:
        async with client.stream("ollama/llama3", body, timeout_s=1.0) as handle:
            return await collect(handle)(client)

    run_with(record, scenario)
    sent = json.loads(seen[0].content)
    assert sent["model"] == "llama3" and sent["stream"] is True
    assert sent["stream_options"] == {"other": 1, "include_usage": True}
    assert seen[0].headers["accept"] == "text/event-stream"


def test_stream_ignores_keepalive_comments_between_bytes() -> None:
    raw = (
        b": OPENROUTER PROCESSING\r\n\r\n"
        + chunk("a").replace(b"\n", b"\r\n")
        + b":ping\n"
        + b"data: [DONE]\n\n"
    )
    _, respond = sse(*[raw[i : i + 3] for i in range(0, len(raw), 3)])
    events, _ = stream_events(respond)
    assert len(events) == 2 and events[-1] == b"[DONE]"


def test_stream_without_done_raises_protocol_error() -> None:
    script, respond = sse(chunk("partial"), chunk("more"))
    error, received = stream_error(respond)
    assert isinstance(error, UpstreamProtocolError) and error.retryable
    assert len(received) == 2 and script.closed


def test_stream_empty_body_fails_at_start() -> None:
    _, respond = sse(b": OPENROUTER PROCESSING\n\n")
    error, received = stream_error(respond)
    assert isinstance(error, UpstreamProtocolError) and received == []


def test_stream_first_event_timeout_raises_timeout() -> None:
    # Keep-alives keep the connection busy, but no data event comes within timeout_s.
    script, respond = sse(*[item for _ in range(200) for item in (b": OPENROUTER PROCESSING\n\n", 0.02)])
    error, received = stream_error(respond, timeout_s=0.2)
    assert isinstance(error, UpstreamTimeout) and received == [] and script.closed


def test_stream_gap_between_events_raises_timeout() -> None:
    script, respond = sse(chunk("a"), *[item for _ in range(200) for item in (b":\n", 0.02)])
    error, received = stream_error(respond, read_timeout_s=0.2)
    assert isinstance(error, UpstreamTimeout) and len(received) == 1 and script.closed


def test_stream_status_error_raised_by_start() -> None:
    def reject(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, json={"error": {"code": 429, "message": "slow down"}})

    error, _ = stream_error(reject)
    assert isinstance(error, UpstreamStatusError) and error.status_code == 429 and b"slow down" in error.body


def test_stream_error_as_first_event_raised_by_start() -> None:
    error_event = chunk(
        error={"code": 502, "message": "provider down"},
        choices=[{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}],
    )
    _, respond = sse(b": OPENROUTER PROCESSING\n\n", error_event, b"data: [DONE]\n\n")
    started: list[bool] = []

    async def scenario(client: UpstreamClient) -> UpstreamError:
        handle = client.stream(MODEL, BODY, timeout_s=1.0)
        with pytest.raises(UpstreamError) as info:
            await handle.start()
        started.append(True)
        return info.value

    error = run_with(respond, scenario)
    assert started and isinstance(error, UpstreamStatusError) and error.status_code == 502


def test_stream_mid_stream_error_event_raised_after_earlier_events() -> None:
    error_event = chunk(
        error={"code": "server_error", "message": "model crashed"},
        choices=[{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}],
    )
    script, respond = sse(chunk("Hello"), error_event, b"data: [DONE]\n\n")
    error, received = stream_error(respond)
    assert isinstance(error, UpstreamProtocolError) and "model crashed" in str(error)
    assert len(received) == 1 and script.closed


def test_stream_non_json_event_is_protocol_error() -> None:
    _, respond = sse(chunk("a"), b"data: not json\n\n", b"data: [DONE]\n\n")
    error, received = stream_error(respond)
    assert isinstance(error, UpstreamProtocolError) and len(received) == 1


def test_stream_json_answer_with_error_body_maps_error() -> None:
    def json_error(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"error": {"code": 503, "message": "no provider"}})

    error, _ = stream_error(json_error)
    assert isinstance(error, UpstreamStatusError) and error.status_code == 503


def test_stream_cancelled_consumer_closes_upstream_response() -> None:
    script, respond = sse(chunk("a"), 5.0, b"data: [DONE]\n\n")

    async def scenario(client: UpstreamClient) -> StreamHandle:
        handle = client.stream(MODEL, BODY, timeout_s=1.0)
        first = asyncio.Event()

        async def consume() -> None:
            await handle.start()
            async for _ in handle.events():
                first.set()

        task = asyncio.create_task(consume())
        await asyncio.wait_for(first.wait(), timeout=2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return handle

    handle = run_with(respond, scenario)
    assert script.closed and not handle.done and not handle.result().done


def test_stream_consumer_stopping_early_then_aclose_closes_response() -> None:
    script, respond = sse(chunk("a"), chunk("b"), 5.0, b"data: [DONE]\n\n")

    async def scenario(client: UpstreamClient) -> None:
        async with client.stream(MODEL, BODY, timeout_s=1.0) as handle:
            await handle.start()
            events = handle.events()
            await anext(events)
            await events.aclose()  # type: ignore[attr-defined]

    run_with(respond, scenario)
    assert script.closed


def test_stream_events_before_start_is_an_error() -> None:
    _, respond = sse(chunk("a"), b"data: [DONE]\n\n")

    async def scenario(client: UpstreamClient) -> None:
        handle = client.stream(MODEL, BODY, timeout_s=1.0)
        with pytest.raises(RuntimeError):
            await anext(handle.events())

    run_with(respond, scenario)


# ---------------------------------------------------------------------------------- SSEParser


def feed_all(chunks: list[bytes]) -> list[bytes]:
    parser = SSEParser()
    return [event for piece in chunks for event in parser.feed(piece)]


def test_sse_parser_follows_field_rules() -> None:
    stream = (
        b"\xef\xbb\xbfdata:no-space\n\n"
        b"data:  two spaces\n\n"
        b"data: first\ndata: second\n\n"
        b": comment\nevent: message\nid: 7\nretry: 10\ndata: {}\n\n"
        b"data\n\n"
        b"data: x: y\n\n"
        b"\n\n"
        b"data: unterminated"
    )
    assert feed_all([stream]) == [b"no-space", b" two spaces", b"first\nsecond", b"{}", b"", b"x: y"]


def test_sse_parser_line_endings_and_split_crlf() -> None:
    assert feed_all([b"data: a\r\n\r\ndata: b\r\rdata: c\n\n"]) == [b"a", b"b", b"c"]
    assert feed_all([b"data: a\r", b"\n", b"\r", b"\ndata: b\r", b"\r"]) == [b"a", b"b"]
    assert feed_all([b"\xef", b"\xbb", b"\xbfdata: a\n\n"]) == [b"a"]
    assert feed_all([b"data:\r", b"\n", b"\n"]) == [b""]


_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=12)
_EOL = st.sampled_from([b"\n", b"\r\n", b"\r"])


@st.composite
def sse_streams(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    """A valid event stream, with comments, other fields and mixed line ends, and its events' data."""
    lines: list[bytes] = []
    expected: list[bytes] = []
    for _ in range(draw(st.integers(0, 6))):
        kept: list[bytes] = []
        for value in draw(st.lists(_TEXT.map(str.encode), min_size=1, max_size=3)):
            if draw(st.booleans()):
                lines.append(b": " + draw(_TEXT).encode())
            if draw(st.booleans()):
                lines.append(b"id: " + draw(_TEXT).encode())
            spaced = draw(st.booleans())
            lines.append((b"data: " if spaced else b"data:") + value)
            kept.append(value[1:] if not spaced and value.startswith(b" ") else value)
        expected.append(b"\n".join(kept))
        lines.append(b"")
    stream = bytearray()
    previous = b""
    for line in lines:
        eol = draw(_EOL)
        if previous == b"\r" and not line and eol == b"\n":
            eol = b"\r"  # CR, then an empty line ended by LF, would read as one CRLF
        stream += line + eol
        previous = eol
    return bytes(stream), expected


@given(sse_streams(), st.lists(st.integers(0, 400), max_size=12))
def test_sse_parser_any_chunking_gives_same_events(case: tuple[bytes, list[bytes]], cuts: list[int]) -> None:
    stream, expected = case
    points = sorted({min(cut, len(stream)) for cut in cuts})
    pieces = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    assert feed_all([stream]) == expected
    assert feed_all(pieces) == expected
    assert feed_all([bytes([byte]) for byte in stream]) == expected


# --- a finished stream as the plain answer it adds up to (what the response cache keeps) -----------


def _streamed(*items: bytes) -> Completion:
    """What a stream of ``items`` (then [DONE]) adds up to, read through a real StreamHandle."""
    _, respond = sse(*items, b"data: [DONE]\n\n")

    async def scenario(client: UpstreamClient) -> Completion:
        async with client.stream(MODEL, BODY, timeout_s=1.0) as handle:
            await handle.start()
            async for _ in handle.events():
                pass
            return handle.result()

    result: Completion = run_with(respond, scenario)
    return result


def test_a_finished_stream_adds_up_to_a_plain_answer() -> None:
    first = chunk("Hi", created=1_700_000_000, system_fingerprint="fp_1")
    completion = _streamed(first, chunk(" there"), chunk(finish="stop"), USAGE_CHUNK)
    answer = streamed_answer(completion, created=1)
    assert answer is not None
    assert (answer["id"], answer["object"], answer["created"]) == ("gen-1", "chat.completion", 1_700_000_000)
    assert answer["system_fingerprint"] == "fp_1" and answer["model"] == completion.model_id
    assert answer["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hi there", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    assert answer["usage"] == {"prompt_tokens": 7, "completion_tokens": 2, "cost": 0.00042}
    cut = streamed_answer(_streamed(chunk("Hi"), chunk(finish="length")), created=1)
    assert cut is not None and cut["choices"][0]["finish_reason"] == "length"
    assert cut["created"] == 1 and "usage" not in cut and "system_fingerprint" not in cut  # not sent


def _choice(delta: dict[str, Any], **extra: Any) -> list[dict[str, Any]]:
    return [{"index": 0, "delta": delta, "finish_reason": None, **extra}]


@pytest.mark.parametrize(
    "extra",
    [
        chunk(choices=_choice({"reasoning": "Let me think."})),  # OpenRouter's reasoning tokens
        chunk(choices=_choice({"reasoning_content": "Hmm."})),  # vLLM's
        chunk(choices=_choice({"refusal": "I can't help with that."})),
        chunk(choices=_choice({"tool_calls": [{"index": 0, "id": "t", "function": {"name": "f"}}]})),
        chunk(choices=_choice({"content": "x"}, logprobs={"content": [{"token": "x", "logprob": -0.1}]})),
        chunk(choices=[{"index": 1, "delta": {"content": "second"}, "finish_reason": None}]),  # n = 2
        chunk(choices=_choice({"annotations": [{"type": "url_citation"}]})),
    ],
    ids=[
        "reasoning",
        "reasoning-content",
        "refusal",
        "tool-calls",
        "logprobs",
        "second-choice",
        "annotations",
    ],
)
def test_a_stream_carrying_more_than_text_has_no_plain_answer(extra: bytes) -> None:
    completion = _streamed(chunk("Hi"), extra, chunk(finish="stop"))
    assert completion.beyond_text
    assert streamed_answer(completion, created=1) is None


def test_an_unfinished_or_tool_calling_stream_has_no_plain_answer() -> None:
    assert streamed_answer(_streamed(chunk("Hi")), created=1) is None  # no finish reason came
    assert streamed_answer(_streamed(chunk("Hi"), chunk(finish="tool_calls")), created=1) is None
    plain = _streamed(
        chunk("Hi", choices=_choice({"role": "assistant", "content": "Hi", "refusal": None})),
        chunk(finish="stop"),
    )
    assert (
        not plain.beyond_text and streamed_answer(plain, created=1) is not None
    )  # null fields are no content
