"""A lean HTTP/1.1 client for the proxy's hot path: one POST, its answer read whole.

aiohttp's ``ClientSession`` spends about 0.6 ms of CPU on a call to a local upstream (request
and response objects, a task to write the body, timers); this client writes the request in
one ``write`` and parses the answer with httptools (uvicorn's parser), about 0.1 ms. It serves
:meth:`AiohttpTransport.post_bytes <adaptive_router.upstream.AiohttpTransport.post_bytes>`
only; streams, proxies and URLs with credentials stay with aiohttp.

    pool = Http1Pool(ssl_context, slots=asyncio.Semaphore(256), keepalive_expiry=5.0)
    status, headers, body = await pool.post(url, headers, b'{"model": ...}', timeouts, max_bytes)

Failures are httpx's errors, the ones :class:`AiohttpTransport` raises for the same failure:
``ConnectError`` / ``ConnectTimeout`` (no connection, or no free slot in time), ``ReadTimeout``
(no byte for ``read`` seconds), ``RemoteProtocolError`` (the peer hung up or sent garbage),
``ReadError`` (a reset), ``DecodingError`` (an answer over ``max_bytes``).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from typing import Any, cast

import httptools
import httpx
from yarl import URL

from ._limits import acquire_slot

__all__ = ["Http1Pool", "lean_target"]

_DEFAULT_PORTS = {"http": 80, "https": 443}


def lean_target(url: URL) -> tuple[str, str, int, bytes, bytes] | None:
    """``(scheme, host, port, target, host header)`` of a URL this client serves, or None
    (another scheme, credentials in the URL, no host: left to aiohttp)."""
    scheme, host = url.scheme, url.raw_host
    if scheme not in _DEFAULT_PORTS or not host or url.raw_user is not None:
        return None
    port = url.port or _DEFAULT_PORTS[scheme]
    shown = f"[{host}]" if ":" in host else host
    if port != _DEFAULT_PORTS[scheme]:
        shown = f"{shown}:{port}"
    return scheme, host, port, url.raw_path_qs.encode("ascii"), shown.encode("ascii")


class _Answer(asyncio.Protocol):
    """One keep-alive connection; collects one answer at a time (httptools calls the ``on_*``)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0
        self.waiter: asyncio.Future[None] | None = None
        self.error: BaseException | None = None
        self.head = False
        self.complete = False
        self.keep_alive = False
        self.status = 0
        self.headers: dict[str, str] = {}
        self.parts: list[bytes] = []
        self.size = 0
        self.limit: int | None = None
        self.last_read = 0.0
        self._timer: asyncio.TimerHandle | None = None

    # --- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if self.waiter is None:  # bytes nobody asked for: the connection is out of step
            self.close()
            return
        self.last_read = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.finish(httpx.RemoteProtocolError(f"invalid answer from the upstream: {exc}"))
            return
        if self.error is not None:  # an answer over the cap (found in a callback)
            self.finish(self.error)
        elif self.complete:
            self.finish(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is None or self.waiter.done():
            return
        if exc is not None:
            self.finish(httpx.ReadError(str(exc) or type(exc).__name__))
        elif self.head and self.headers.get("content-length") is None and not self._chunked():
            self.finish(None)  # a body delimited by the end of the connection
        else:
            self.finish(httpx.RemoteProtocolError("Server disconnected"))

    # --- httptools callbacks -------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))

    def on_headers_complete(self) -> None:
        self.head = True
        self.status = self.parser.get_status_code()
        declared = self.headers.get("content-length")
        if (
            self.limit is not None
            and declared is not None
            and declared.isdigit()
            and int(declared) > self.limit
        ):
            self.error = httpx.DecodingError(f"answer of {declared} bytes exceeds the limit of {self.limit}")

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.limit is not None and self.size > self.limit:
            self.error = self.error or httpx.DecodingError(f"answer exceeds the limit of {self.limit} bytes")
            return
        self.parts.append(body)

    def on_message_complete(self) -> None:
        if 100 <= self.status < 200:  # an interim answer (103 Early Hints): the real one follows
            self.head, self.status, self.headers, self.parts, self.size = False, 0, {}, [], 0
            return
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()  # reset once the callback returns

    # --- one exchange --------------------------------------------------------------------------

    async def exchange(self, request: bytes, read_s: float | None, limit: int | None) -> None:
        """Send ``request`` and wait for the whole answer (``read_s``: the longest silence)."""
        assert self.transport is not None
        if self.transport.is_closing():
            raise httpx.RemoteProtocolError("Server disconnected")
        self.waiter = self.loop.create_future()
        self.error, self.head, self.complete, self.keep_alive = None, False, False, False
        self.status, self.headers, self.parts, self.size, self.limit = 0, {}, [], 0, limit
        self.last_read = self.loop.time()
        if read_s is not None:
            self._timer = self.loop.call_at(self.last_read + read_s, self._check_read, read_s)
        try:
            self.transport.write(request)
            await self.waiter
        finally:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self.waiter = None

    def _check_read(self, read_s: float) -> None:
        due = self.last_read + read_s
        if self.loop.time() >= due:
            self._timer = None
            self.finish(httpx.ReadTimeout(f"no data from the upstream for {read_s:g} s"))
        else:
            self._timer = self.loop.call_at(due, self._check_read, read_s)

    def finish(self, error: BaseException | None) -> None:
        if error is not None:
            self.close()
        if self.waiter is not None and not self.waiter.done():
            if error is None:
                self.waiter.set_result(None)
            else:
                self.waiter.set_exception(error)

    def reusable(self) -> bool:
        return not self.closed and self.complete and self.keep_alive

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _chunked(self) -> bool:
        return "chunked" in self.headers.get("transfer-encoding", "").lower()


class Http1Pool:
    """Keep-alive connections per (scheme, host, port); ``slots`` bounds the calls in flight
    (shared with the transport's other requests, so ``max_connections`` stays one limit)."""

    def __init__(
        self,
        ssl_context: ssl.SSLContext,
        *,
        slots: asyncio.Semaphore | None,
        keepalive_expiry: float | None,
    ) -> None:
        self._ssl = ssl_context
        self._slots = slots
        self._expiry = keepalive_expiry
        self._idle: dict[tuple[str, str, int], list[_Answer]] = {}

    async def post(
        self,
        target: tuple[str, str, int, bytes, bytes],
        headers: Mapping[str, str],
        body: bytes,
        timeout: Mapping[str, float | None],
        max_bytes: int | None,
    ) -> tuple[int, Mapping[str, str], bytes]:
        """Status, headers (names in lower case) and the raw body of one POST to ``target``."""
        request = _request(target, headers, body)
        slots = self._slots
        if slots is not None:
            await acquire_slot(slots, timeout)
        try:
            conn = await self._connection(target, timeout)
            try:
                await conn.exchange(request, timeout.get("read"), max_bytes)
            except BaseException:
                conn.close()  # cancelled or failed mid-answer: the connection's state is unknown
                raise
            self._release(target, conn)
            return conn.status, conn.headers, b"".join(conn.parts)
        finally:
            if slots is not None:
                slots.release()

    async def _connection(
        self, target: tuple[str, str, int, bytes, bytes], timeout: Mapping[str, Any]
    ) -> _Answer:
        loop = asyncio.get_running_loop()
        idle = self._idle.get(target[:3])
        now = loop.time()
        while idle:
            conn = idle.pop()
            if conn.closed or (self._expiry is not None and now - conn.idle_since > self._expiry):
                conn.close()
                continue
            return conn
        scheme, host, port = target[:3]
        tls = self._ssl if scheme == "https" else None
        try:
            async with asyncio.timeout(timeout.get("connect")):
                _, conn = await loop.create_connection(
                    lambda: _Answer(loop), host, port, ssl=tls, server_hostname=host if tls else None
                )
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(f"could not connect to {host}:{port} in time") from exc
        except OSError as exc:  # refused, unreachable, DNS, TLS handshake
            raise httpx.ConnectError(f"Cannot connect to host {host}:{port} [{exc}]") from exc
        return conn

    def _release(self, target: tuple[str, str, int, bytes, bytes], conn: _Answer) -> None:
        if not conn.reusable():
            conn.close()
            return
        conn.idle_since = conn.loop.time()
        self._idle.setdefault(target[:3], []).append(conn)

    def close(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()


def _request(target: tuple[str, str, int, bytes, bytes], headers: Mapping[str, str], body: bytes) -> bytes:
    lines = [b"POST ", target[3], b" HTTP/1.1\r\nHost: ", target[4], b"\r\n"]
    for name, value in headers.items():
        if name.lower() in ("host", "content-length", "transfer-encoding"):
            continue
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name or ":" in name:
            raise httpx.LocalProtocolError(f"invalid header {name!r}")
        lines += [name.encode(), b": ", value.encode(), b"\r\n"]  # UTF-8, as aiohttp sends them
    lines += [b"Content-Length: ", str(len(body)).encode(), b"\r\n\r\n", body]
    return b"".join(lines)
