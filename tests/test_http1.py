"""The lean HTTP/1.1 client behind ``AiohttpTransport.post_bytes``, against scripted servers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from adaptive_router.upstream import AiohttpTransport

TIMEOUT = {"connect": 1.0, "read": 2.0, "pool": 1.0}
Answer = Callable[[bytes], bytes | None]  # the request's bytes -> the raw answer (None: hang up)
HANG_UP = b"<hang up>"  # at the end of an answer: the server closes the connection after it


async def _serve(answer: Answer, seen: list[bytes], peers: set[int]) -> tuple[asyncio.Server, str]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peers.add(writer.get_extra_info("peername")[1])
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                request = head + await reader.readexactly(length)
                seen.append(request)
                raw = answer(request)
                if raw is None:
                    break
                writer.write(raw.removesuffix(HANG_UP))
                await writer.drain()
                if b"connection: close" in raw.lower() or raw.endswith(HANG_UP):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/v1/chat/completions?x=1"


def exchange(
    answer: Answer, calls: Callable[[AiohttpTransport, str], Awaitable[Any]]
) -> tuple[Any, list[bytes], set[int]]:
    seen: list[bytes] = []
    peers: set[int] = set()

    async def main() -> Any:
        server, url = await _serve(answer, seen, peers)
        transport = AiohttpTransport(max_connections=4)
        try:
            return await asyncio.wait_for(calls(transport, url), 10)
        finally:
            await transport.aclose()
            server.close()

    return asyncio.run(main()), seen, peers


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Request-Id: r1\r\n%s\r\n" % (len(body), extra) + body


async def two_posts(transport: AiohttpTransport, url: str) -> list[tuple[int, Any, bytes]]:
    headers = {"Content-Type": "application/json", "Authorization": "Bearer k"}
    return [await transport.post_bytes(url, headers, b'{"n": %d}' % i, TIMEOUT, 1024) for i in range(2)]


def test_post_bytes_keeps_one_connection_alive_for_consecutive_calls() -> None:
    answers, seen, peers = exchange(lambda request: ok(request.split(b"\r\n\r\n")[1]), two_posts)
    assert [(status, body) for status, _, body in answers] == [(200, b'{"n": 0}'), (200, b'{"n": 1}')]
    assert answers[0][1]["x-request-id"] == "r1"
    assert len(peers) == 1  # the second call reused the first call's connection
    head = seen[0].split(b"\r\n\r\n")[0].split(b"\r\n")
    assert head[0] == b"POST /v1/chat/completions?x=1 HTTP/1.1"
    assert {b"Authorization: Bearer k", b"Content-Length: 8"} <= set(head)
    assert any(line.startswith(b"Host: 127.0.0.1:") for line in head)


def test_post_bytes_reads_chunked_and_close_delimited_answers() -> None:
    early = b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"  # an interim answer first
    chunked = early + b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    until_close = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it"
    script = iter([chunked, until_close])
    answers, _, peers = exchange(lambda request: next(script), two_posts)
    assert [body for _, _, body in answers] == [b"abcde", b"all of it"]
    assert len(peers) == 1


def test_a_connection_the_server_closed_is_not_reused() -> None:
    # The server hangs up after each answer without saying so: the next call opens a new one.
    def answer(request: bytes) -> bytes | None:
        return ok(b"{}", b"Connection: close\r\n") if request else None

    answers, _, peers = exchange(answer, two_posts)
    assert [status for status, _, _ in answers] == [200, 200] and len(peers) == 2


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000,  # declared over the cap
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n400\r\n" + b"y" * 1024 + b"\r\n0\r\n\r\n",
    ],
    ids=["declared", "chunked"],
)
def test_an_answer_over_the_cap_is_a_decoding_error(raw: bytes) -> None:
    async def post(transport: AiohttpTransport, url: str) -> BaseException:
        with pytest.raises(httpx.DecodingError) as info:
            await transport.post_bytes(url, {}, b"{}", TIMEOUT, 1000)
        return info.value

    error, _, _ = exchange(lambda request: raw, post)
    assert "limit of 1000" in str(error)


@pytest.mark.parametrize(
    "raw",
    [
        None,  # hung up before answering
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort" + HANG_UP,  # cut short
        b"NOT HTTP AT ALL\r\n\r\n",
    ],
    ids=["hung-up", "cut-short", "not-http"],
)
def test_a_broken_answer_is_a_remote_protocol_error_as_with_aiohttp(raw: bytes | None) -> None:
    async def post(transport: AiohttpTransport, url: str) -> BaseException:
        with pytest.raises(httpx.TransportError) as info:
            await transport.post_bytes(url, {}, b"{}", TIMEOUT, 1000)
        return info.value

    error, _, _ = exchange(lambda request: raw, post)
    assert isinstance(error, httpx.RemoteProtocolError)
