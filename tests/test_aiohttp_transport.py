from __future__ import annotations

import asyncio
import gzip
import json
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import Any, TypeVar

import aiohttp
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from adaptive_router import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamStatusError,
    UpstreamTimeout,
)
from adaptive_router.simulator import Scenario, SimEvent, SimModel, create_simulator_app
from adaptive_router.upstream import (
    DONE,
    AiohttpTransport,
    Completion,
    Provider,
    StreamHandle,
    UpstreamClient,
)
from adaptive_router.upstream._aiohttp_transport import _translate
from adaptive_router.upstream._client import _default_transport
from tests.servers import free_port, running_server

T = TypeVar("T")
OK, SLOW, DROP, E500, E429, LONG = "lab/ok", "lab/slow", "lab/drop", "lab/500", "lab/429", "lab/long"
TIME_SCALE = 0.01  # a simulated second lasts 10 ms
TPOT_S = 0.2  # simulated: 2 ms of real time between tokens
LONG_TPOT_S = 0.5  # 5 ms
MAX_TOKENS = 16
BODY: dict[str, Any] = {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": MAX_TOKENS}
EVENTS = [
    SimEvent(at_request=0, model=SLOW, action="slow", factor=15.0),  # answers after 0.6 s of real time
    SimEvent(at_request=0, model=DROP, action="fail", status=0),
    SimEvent(at_request=0, model=E500, action="fail", status=500),
    SimEvent(at_request=0, model=E429, action="rate_limit", retry_after_s=0.0),
]


def _exact(model_id: str, tpot_s: float = TPOT_S) -> SimModel:
    return SimModel(
        model_id, ttft_s=1.0, tpot_s=tpot_s, error_rate=0.0, rate_limit_rate=0.0,
        ttft_sigma=0.0, tpot_sigma=0.0, tail_prob=0.0,
    )  # fmt: skip


@pytest.fixture(scope="module")
def sim_url() -> Iterator[str]:
    models = [
        _exact(OK),
        _exact(SLOW),
        _exact(DROP),
        _exact(E500),
        _exact(E429),
        _exact(LONG, tpot_s=LONG_TPOT_S),
    ]
    app = create_simulator_app(models, Scenario(seed=1, time_scale=TIME_SCALE, events=EVENTS))
    with running_server(app) as url:
        yield url + "/v1"


def run(
    base_url: str,
    scenario: Callable[[UpstreamClient], Awaitable[T]],
    *,
    transport: Callable[[], httpx.AsyncBaseTransport] | None = None,
    connect_timeout_s: float = 1.0,
    read_timeout_s: float = 5.0,
    max_connections: int = 4,
) -> T:
    """``scenario`` against one UpstreamClient over ``transport()`` (default: AiohttpTransport)."""

    async def main() -> T:
        make = transport or (lambda: AiohttpTransport(max_connections=max_connections))
        client = UpstreamClient(
            [Provider(name="sim", base_url=base_url)],
            connect_timeout_s=connect_timeout_s,
            read_timeout_s=read_timeout_s,
            max_connections=max_connections,
            transport=make(),
        )
        async with client:
            return await asyncio.wait_for(scenario(client), timeout=10)

    return asyncio.run(main())


def httpx_default() -> httpx.AsyncBaseTransport:
    return httpx.AsyncHTTPTransport()  # explicit: no proxy from the environment


async def streamed(
    client: UpstreamClient, model: str = OK, body: dict[str, Any] = BODY
) -> tuple[StreamHandle, list[bytes]]:
    handle = client.stream(model, body, timeout_s=5.0)
    async with handle:
        await handle.start()
        return handle, [payload async for payload in handle.events()]


def error_of(
    base_url: str,
    model: str,
    *,
    stream: bool = False,
    body: dict[str, Any] = BODY,
    timeout_s: float = 5.0,
    **kw: Any,
) -> UpstreamError:
    async def scenario(client: UpstreamClient) -> UpstreamError:
        with pytest.raises(UpstreamError) as info:
            if stream:
                await streamed(client, model, body)
            else:
                await client.complete(model, body, timeout_s=timeout_s)
        return info.value

    return run(base_url, scenario, **kw)


def without_ids(payload: bytes | dict[str, Any]) -> Any:
    """An answer or chunk without the fields that differ between two calls: id and time."""
    if payload == DONE:
        return "[DONE]"
    data = json.loads(payload) if isinstance(payload, bytes) else dict(payload)
    data.pop("id", None)
    data.pop("created", None)
    return data


# ---------------------------------------------------------------------------------- same results


def test_complete_matches_httpx_transport(sim_url: str) -> None:
    def call(transport: Callable[[], httpx.AsyncBaseTransport] | None) -> Completion:
        return run(sim_url, lambda client: client.complete(OK, BODY, timeout_s=5.0), transport=transport)

    ours, theirs = call(None), call(httpx_default)
    assert ours.status == theirs.status == 200
    assert without_ids(ours.data) == without_ids(theirs.data)
    assert (ours.prompt_tokens, ours.completion_tokens) == (theirs.prompt_tokens, MAX_TOKENS)
    assert ours.finish_reason == theirs.finish_reason == "length"
    assert ours.headers["content-type"] == theirs.headers["content-type"] == "application/json"


def test_stream_matches_httpx_transport_and_stays_streaming(sim_url: str) -> None:
    ours, events = run(sim_url, lambda client: streamed(client, LONG))
    theirs, their_events = run(sim_url, lambda client: streamed(client, LONG), transport=httpx_default)
    assert [without_ids(e) for e in events] == [without_ids(e) for e in their_events]
    assert events[-1] == DONE and ours.done and len(events) > 3
    done, other = ours.result(), theirs.result()
    assert done.data["usage"] == other.data["usage"]
    assert (done.prompt_tokens, done.completion_tokens) == (other.prompt_tokens, MAX_TOKENS)


def test_stream_events_reach_the_caller_before_the_answer_ends() -> None:
    # A handshake, not a timer: the upstream sends one event and then waits until the caller has
    # read it before it sends the rest. A transport that buffered the body would read nothing
    # until the upstream gave up waiting (a slow machine only makes this take longer).
    first_read = threading.Event()
    waited: list[bool] = []

    async def stream(request: Request) -> StreamingResponse:
        async def events() -> AsyncIterator[bytes]:
            chunk = {"id": "c", "object": "chat.completion.chunk", "model": OK, "created": 0}
            delta = {"index": 0, "delta": {"content": "one"}, "finish_reason": None}
            yield b"data: " + json.dumps({**chunk, "choices": [delta]}).encode() + b"\n\n"
            waited.append(await asyncio.to_thread(first_read.wait, 5.0))
            last = {"index": 0, "delta": {"content": " two"}, "finish_reason": "stop"}
            yield b"data: " + json.dumps({**chunk, "choices": [last]}).encode() + b"\n\n"
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def scenario(client: UpstreamClient) -> list[bytes]:
        handle = client.stream(OK, BODY, timeout_s=20.0)
        seen = []
        async with handle:
            await handle.start()
            async for payload in handle.events():
                seen.append(payload)
                first_read.set()
        return seen

    app = Starlette(routes=[Route("/v1/chat/completions", stream, methods=["POST"])])
    with running_server(app) as url:
        events = run(url + "/v1", scenario, read_timeout_s=20.0)
    assert waited == [True], "the first event reached the caller only after the upstream gave up"
    assert events[-1] == DONE and len(events) == 3


def test_transport_sends_headers_and_body_and_httpx_decodes(sim_url: str) -> None:
    async def echo(request: Request) -> Response:
        seen = {
            "headers": [[k.decode(), v.decode()] for k, v in request.headers.raw],
            "body": (await request.body()).decode(),
        }
        return Response(
            gzip.compress(json.dumps(seen).encode()),
            headers={"content-encoding": "gzip"},
            media_type="application/json",
        )

    async def chunks() -> AsyncIterator[bytes]:
        yield b"part one, "
        yield b"part two"

    async def main(url: str) -> tuple[httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(transport=AiohttpTransport(max_connections=2)) as client:
            plain = await client.post(
                url, json={"a": 1}, headers={"Authorization": "Bearer k", "X-Title": "t"}
            )
            streamed_body = await client.post(url, content=chunks())
            return plain, streamed_body

    app = Starlette(routes=[Route("/echo", echo, methods=["POST"])])
    with running_server(app) as url:
        plain, streamed_body = asyncio.run(main(url + "/echo"))
    headers = {k.lower(): v for k, v in plain.json()["headers"]}
    assert headers["authorization"] == "Bearer k" and headers["x-title"] == "t"
    assert headers["content-type"] == "application/json" and headers["host"] == url.removeprefix("http://")
    assert json.loads(plain.json()["body"]) == {"a": 1}
    assert streamed_body.json()["body"] == "part one, part two"
    assert plain.headers["content-encoding"] == "gzip" and plain.http_version == "HTTP/1.1"


def test_post_bytes_sends_the_body_and_decodes_gzip(sim_url: str) -> None:
    async def echo(request: Request) -> Response:
        seen = {"headers": dict(request.headers), "body": (await request.body()).decode()}
        return Response(
            gzip.compress(json.dumps(seen).encode()),
            headers={"content-encoding": "gzip", "x-request-id": "r1"},
        )

    async def main(url: str) -> tuple[int, Mapping[str, str], bytes]:
        transport = AiohttpTransport(max_connections=2)
        try:
            headers = {"Authorization": "Bearer k", "Content-Type": "application/json"}
            return await transport.post_bytes(url, headers, b'{"a": 1}', {"connect": 1.0, "read": 5.0})
        finally:
            await transport.aclose()

    app = Starlette(routes=[Route("/echo", echo, methods=["POST"])])
    with running_server(app) as url:
        status, headers, content = asyncio.run(main(url + "/echo"))
    seen = json.loads(content)
    assert status == 200 and headers["x-request-id"] == "r1"
    assert seen["headers"]["authorization"] == "Bearer k" and json.loads(seen["body"]) == {"a": 1}


# ---------------------------------------------------------------------------------- failures


def test_slow_upstream_raises_timeout(sim_url: str) -> None:
    error = error_of(sim_url, SLOW, timeout_s=0.3)
    assert isinstance(error, UpstreamTimeout) and error.retryable


def test_read_timeout_maps_to_timeout(sim_url: str) -> None:
    # The attempt may last 5 s, but no byte comes for 0.6 s: aiohttp's sock_read fires first.
    error = error_of(sim_url, SLOW, read_timeout_s=0.2)
    assert isinstance(error, UpstreamTimeout) and isinstance(error.__cause__, httpx.ReadTimeout)


def test_refused_connection_raises_connect_error() -> None:
    error = error_of(f"http://127.0.0.1:{free_port()}/v1", OK)  # nobody listens there
    assert isinstance(error, UpstreamConnectError) and isinstance(error.__cause__, httpx.ConnectError)


@pytest.mark.parametrize("stream", [False, True])
def test_dropped_connection_raises_retryable_error(sim_url: str, stream: bool) -> None:
    error = error_of(sim_url, DROP, stream=stream)
    assert isinstance(error, UpstreamProtocolError) and error.retryable
    assert isinstance(error.__cause__, httpx.RemoteProtocolError | httpx.ReadError)


@pytest.mark.parametrize(
    ("model", "body", "status", "retryable"),
    [
        (E500, BODY, 500, True),
        (E429, BODY, 429, True),
        (OK, {**BODY, "temperature": 5}, 400, False),  # the simulator rejects it as OpenAI would
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_error_status_maps_as_before(
    sim_url: str, model: str, body: dict[str, Any], status: int, retryable: bool, stream: bool
) -> None:
    error = error_of(sim_url, model, stream=stream, body=body)
    assert isinstance(error, UpstreamStatusError)
    assert (error.status_code, error.retryable) == (status, retryable)
    assert json.loads(error.body)["error"]["message"]


def test_full_pool_waits_then_raises_connect_error(sim_url: str) -> None:
    async def scenario(client: UpstreamClient) -> UpstreamError:
        async with client.stream(LONG, {**BODY, "max_tokens": 200}, timeout_s=5.0) as holder:
            await holder.start()  # holds the only connection
            with pytest.raises(UpstreamError) as info:
                await client.complete(OK, BODY, timeout_s=5.0)
            return info.value

    error = run(sim_url, scenario, connect_timeout_s=0.1, max_connections=1)
    assert isinstance(error, UpstreamConnectError) and isinstance(error.__cause__, httpx.ConnectTimeout)


def test_cancelled_stream_releases_its_connection(sim_url: str) -> None:
    transport = AiohttpTransport(max_connections=1)

    async def scenario(client: UpstreamClient) -> tuple[int, int, Completion]:
        first = asyncio.Event()

        async def consume() -> None:
            async with client.stream(LONG, {**BODY, "max_tokens": 200}, timeout_s=5.0) as handle:
                await handle.start()
                async for _ in handle.events():
                    first.set()

        task = asyncio.create_task(consume())
        await asyncio.wait_for(first.wait(), timeout=5)
        assert transport.session is not None
        acquired = len(transport.session.connector._acquired)  # type: ignore[union-attr]
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        after = len(transport.session.connector._acquired)  # type: ignore[union-attr]
        # With a pool of one, this call only gets through if the stream gave its connection back.
        return acquired, after, await client.complete(OK, BODY, timeout_s=5.0)

    acquired, after, done = run(sim_url, scenario, transport=lambda: transport, max_connections=1)
    assert (acquired, after, done.status) == (1, 0, 200)


# ---------------------------------------------------------------------------------- mapping, choice


REQUEST = httpx.Request("POST", "http://127.0.0.1:1/v1/chat/completions")


@pytest.mark.parametrize(
    ("exc", "in_body", "expected"),
    [
        (aiohttp.ConnectionTimeoutError("connect"), False, httpx.ConnectTimeout),
        (aiohttp.SocketTimeoutError("read"), False, httpx.ReadTimeout),
        (aiohttp.ServerTimeoutError("read"), True, httpx.ReadTimeout),
        (TimeoutError(), False, httpx.ConnectTimeout),
        (aiohttp.ServerDisconnectedError(), False, httpx.RemoteProtocolError),
        (aiohttp.ServerDisconnectedError(), True, httpx.RemoteProtocolError),
        (aiohttp.ClientPayloadError("cut short"), True, httpx.RemoteProtocolError),
        (aiohttp.ClientOSError(104, "Connection reset by peer"), True, httpx.ReadError),
        (aiohttp.InvalidURL("ftp://x"), False, httpx.UnsupportedProtocol),
    ],
)
def test_translate_picks_httpx_error(exc: BaseException, in_body: bool, expected: type[Exception]) -> None:
    mapped = _translate(exc, REQUEST, in_body=in_body)
    assert type(mapped) is expected and mapped.request is REQUEST


def test_default_transport_follows_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "localhost")  # alone, it does not call for httpx's transport
    assert isinstance(_default_transport("auto", 8), AiohttpTransport)
    assert isinstance(_default_transport("aiohttp", 8), AiohttpTransport)
    assert isinstance(_default_transport("httpx", 8), httpx.AsyncHTTPTransport)
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # only httpx's client honours it
    assert _default_transport("auto", 8) is None
    assert _default_transport("httpx", 8) is None
    assert isinstance(_default_transport("aiohttp", 8), AiohttpTransport)


def test_default_transport_without_aiohttp(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "aiohttp", None)  # import aiohttp now raises ImportError
    monkeypatch.delitem(sys.modules, "adaptive_router.upstream._aiohttp_transport")
    assert isinstance(_default_transport("auto", 8), httpx.AsyncHTTPTransport)
    with pytest.raises(ImportError, match=r"adaptive-router\[speed\]"):
        _default_transport("aiohttp", 8)
