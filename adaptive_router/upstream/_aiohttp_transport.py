"""An httpx transport whose connections are aiohttp's: httpx's requests, responses and errors stay.

httpcore's async pool costs a busy router most of its CPU in assigning requests to connections;
aiohttp's connector and C parser do that work for a fraction of it. Only connection handling
changes: httpx still builds the request, decodes the body (``Content-Encoding``) and raises its
own exceptions, so code written against httpx keeps working unchanged.

    transport = AiohttpTransport(max_connections=256)
    async with httpx.AsyncClient(transport=transport) as client:   # aclose() closes the transport
        response = await client.post(url, json=body)

Differences from httpx's own transport: HTTP/1.1 only; no proxies from the environment; no
write timeout (aiohttp has none); ``pool`` and ``connect`` timeouts together bound the wait for
a connection (aiohttp's ``connect`` covers both waiting for a free slot and opening one).
"""

from __future__ import annotations

import asyncio
import functools
import zlib
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import aiohttp
import httpx
from multidict import CIMultiDict
from yarl import URL

from ._limits import acquire_slot, read_capped

try:  # httptools comes with the speed extra, as aiohttp does; without it aiohttp posts too
    from ._http1 import Http1Pool, lean_target
except ImportError:  # pragma: no cover - exercised where httptools is absent
    Http1Pool = None  # type: ignore[assignment,misc]
    lean_target = None  # type: ignore[assignment]

__all__ = ["AiohttpTransport"]

_CACHE_SIZE = 256
_GZIP_OR_ZLIB = 47  # zlib wbits: a gzip or a zlib header, told apart by the data


def _aiohttp_class(name: str) -> tuple[type[BaseException], ...]:
    """``(aiohttp.<name>,)``, or ``()`` on an aiohttp that predates it (3.10 named the timeouts)."""
    cls = getattr(aiohttp, name, None)
    return (cls,) if isinstance(cls, type) and issubclass(cls, BaseException) else ()


_CONNECT_TIMEOUT = _aiohttp_class("ConnectionTimeoutError")
_READ_TIMEOUT = _aiohttp_class("SocketTimeoutError")


def _translate(exc: BaseException, request: httpx.Request | None, *, in_body: bool) -> httpx.TransportError:
    """The httpx error that httpx's own transport raises for the same failure.

    ``in_body``: the response head had arrived. A peer that hangs up, before the head or in the
    body, is a ``RemoteProtocolError`` as in httpcore; a reset is a ``ReadError``.
    """
    message = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ClientConnectorError):  # refused, unreachable, DNS, TLS handshake
        return httpx.ConnectError(message, request=request)
    if isinstance(exc, TimeoutError):  # aiohttp's ServerTimeoutError and its kinds
        connecting = isinstance(exc, _CONNECT_TIMEOUT) or not (in_body or isinstance(exc, _READ_TIMEOUT))
        return (httpx.ConnectTimeout if connecting else httpx.ReadTimeout)(message, request=request)
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return httpx.RemoteProtocolError(message, request=request)
    if isinstance(exc, aiohttp.ClientResponseError):  # a status line or header aiohttp cannot parse
        return httpx.RemoteProtocolError(message, request=request)
    if isinstance(exc, aiohttp.ClientOSError):
        return httpx.ReadError(message, request=request)
    if isinstance(exc, aiohttp.InvalidURL | aiohttp.NonHttpUrlClientError):
        return httpx.UnsupportedProtocol(message, request=request)
    return httpx.TransportError(message, request=request)


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _client_timeout(connect: float | None, read: float | None, pool: float | None) -> aiohttp.ClientTimeout:
    # total=None: httpx has no overall bound either (aiohttp's default is five minutes).
    acquire = None if pool is None else pool + (connect or 0.0)
    return aiohttp.ClientTimeout(total=None, connect=acquire, sock_connect=connect, sock_read=read)


def _timeout(extension: Mapping[str, float | None] | None) -> aiohttp.ClientTimeout:
    if not extension:
        return _client_timeout(None, None, None)
    return _client_timeout(extension.get("connect"), extension.get("read"), extension.get("pool"))


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _url(text: str) -> URL:
    return URL(text, encoded=True)  # httpx has already percent-encoded it


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _lean_target(url: str) -> tuple[str, str, int, bytes, bytes] | None:
    return lean_target(_url(url)) if lean_target is not None else None


def _headers(request: httpx.Request) -> CIMultiDict[str]:
    encoding = request.headers.encoding
    return CIMultiDict((key.decode(encoding), value.decode(encoding)) for key, value in request.headers.raw)


def _body(request: httpx.Request, headers: CIMultiDict[str]) -> Any:
    try:
        return request.content or None
    except httpx.RequestNotRead:  # a streamed body: aiohttp frames it itself
        headers.popall("transfer-encoding", None)
        return request.stream


def _decompress(content: bytes, max_bytes: int | None) -> bytes:
    """gzip or zlib data decoded, refused as soon as it decodes to more than ``max_bytes``."""
    decoder = zlib.decompressobj(_GZIP_OR_ZLIB)
    out = decoder.decompress(content, 0 if max_bytes is None else max_bytes + 1)
    if max_bytes is not None and len(out) > max_bytes:
        raise httpx.DecodingError(f"answer decodes to more than the limit of {max_bytes} bytes")
    if not decoder.eof:
        raise zlib.error("incomplete or truncated stream")
    return out


class _ResponseBody(httpx.AsyncByteStream):
    """The body as aiohttp receives it, chunk by chunk; ``aclose`` hands the connection back
    (or closes it, when the body was not read to its end) and frees the request's slot."""

    def __init__(
        self, response: aiohttp.ClientResponse, request: httpx.Request, release: Callable[[], None]
    ) -> None:
        self._response = response
        self._request = request
        self._release: Callable[[], None] | None = release

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _translate(exc, self._request, in_body=True) from exc

    async def aclose(self) -> None:
        release, self._release = self._release, None
        try:
            self._response.release()
            await self._response.wait_for_close()
        finally:
            if release is not None:
                release()


def _nothing() -> None:
    pass


class AiohttpTransport(httpx.AsyncBaseTransport):
    """httpx requests over one aiohttp ``ClientSession`` (created on first use, in the running loop).

    ``max_connections``: the pool's size (``None``: unbounded); ``keepalive_expiry``: how long an
    idle connection is kept (httpx's default, 5 s); ``ttl_dns_cache``: seconds a resolved name is
    reused. Certificates are checked against httpx's own default (certifi, ``SSL_CERT_FILE``).

    A plain POST read whole (:meth:`post_bytes`) goes over a lean HTTP/1.1 client of its own
    (:mod:`._http1`, with httptools) rather than aiohttp's; both draw on one pool of
    ``max_connections`` slots, one per request in flight.
    """

    def __init__(
        self,
        *,
        max_connections: int | None = 100,
        keepalive_expiry: float | None = 5.0,
        ttl_dns_cache: int | None = 10,
    ) -> None:
        self._max_connections = max_connections
        self._keepalive_expiry = keepalive_expiry
        self._ttl_dns_cache = ttl_dns_cache
        self._ssl = httpx.create_ssl_context()
        self._session: aiohttp.ClientSession | None = None
        self._slots: asyncio.Semaphore | None = None  # requests in flight, both clients together
        self._lean: Http1Pool | None = None

    @property
    def session(self) -> aiohttp.ClientSession | None:
        """The aiohttp session, once a request has opened it."""
        return self._session

    def _open(self) -> aiohttp.ClientSession:
        # Made here, in the running loop. The slots bound both clients: aiohttp's own
        # connector is unbounded (0).
        self._slots = asyncio.Semaphore(self._max_connections) if self._max_connections else None
        if Http1Pool is not None:
            self._lean = Http1Pool(self._ssl, slots=self._slots, keepalive_expiry=self._keepalive_expiry)
        connector = aiohttp.TCPConnector(
            limit=0,
            limit_per_host=0,
            keepalive_timeout=self._keepalive_expiry,
            ttl_dns_cache=self._ttl_dns_cache,
            ssl=self._ssl,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),  # httpx's client keeps the cookies, if any
            auto_decompress=False,  # httpx decodes Content-Encoding itself, from the headers
            timeout=_client_timeout(None, None, None),
        )
        return self._session

    async def _slot(self, timeout: Mapping[str, float | None] | None) -> Callable[[], None]:
        """Wait for a free slot (``ConnectTimeout`` after ``pool`` + ``connect``); its release."""
        slots = self._slots
        if slots is None:
            return _nothing
        await acquire_slot(slots, timeout or {})
        return slots.release

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self._session or self._open()
        headers = _headers(request)
        timeout = request.extensions.get("timeout")
        try:
            release = await self._slot(timeout)
        except httpx.ConnectTimeout as exc:
            exc.request = request
            raise
        try:
            response = await session.request(
                request.method,
                _url(str(request.url)),
                headers=headers,
                data=_body(request, headers),
                allow_redirects=False,
                timeout=_timeout(timeout),
            )
        except BaseException as exc:
            release()
            if isinstance(exc, aiohttp.ClientError | TimeoutError):
                raise _translate(exc, request, in_body=False) from exc
            raise
        version = response.version or aiohttp.HttpVersion11
        return httpx.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=_ResponseBody(response, request, release),
            request=request,
            extensions={
                "http_version": f"HTTP/{version.major}.{version.minor}".encode("ascii"),
                "reason_phrase": (response.reason or "").encode("ascii", "replace"),
            },
        )

    async def post_bytes(
        self,
        url: str,
        headers: Mapping[str, str],
        body: bytes,
        timeout: Mapping[str, float | None],
        max_bytes: int | None = None,
    ) -> tuple[int, Mapping[str, str], bytes]:
        """One POST read whole, without httpx's request and response objects (the proxy's hot
        path): status, headers and the decoded body. Failures are raised as httpx's errors, the
        same ones :meth:`handle_async_request` raises; a body (read or decoded) over ``max_bytes``
        is httpx's ``DecodingError``, raised before more than that is held."""
        session = self._session or self._open()
        target = _lean_target(url) if self._lean is not None else None
        if target is not None and self._lean is not None:
            status, got, content = await self._lean.post(target, headers, body, timeout, max_bytes)
        else:
            status, got, content = await self._aiohttp_post(session, url, headers, body, timeout, max_bytes)
        encoding = got.get("content-encoding", "").lower()
        if content and encoding in ("gzip", "deflate"):  # the session leaves decoding to us
            try:
                content = _decompress(content, max_bytes)
            except zlib.error as exc:
                raise httpx.DecodingError(f"{encoding} body could not be decoded: {exc}") from exc
        return status, got, content

    async def _aiohttp_post(
        self,
        session: aiohttp.ClientSession,
        url: str,
        headers: Mapping[str, str],
        body: bytes,
        timeout: Mapping[str, float | None],
        max_bytes: int | None,
    ) -> tuple[int, Mapping[str, str], bytes]:
        release = await self._slot(timeout)
        in_body = False
        try:
            async with session.post(
                _url(url), headers=headers, data=body, allow_redirects=False, timeout=_timeout(timeout)
            ) as response:
                in_body = True
                if max_bytes is None:
                    content = await response.read()
                else:
                    declared = response.headers.get("content-length")
                    content = await read_capped(response.content.iter_any(), max_bytes, declared)
                return response.status, response.headers, content
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _translate(exc, None, in_body=in_body) from exc
        finally:
            release()

    async def aclose(self) -> None:
        lean, self._lean = self._lean, None
        if lean is not None:
            lean.close()
        session, self._session = self._session, None
        if session is not None:
            await session.close()
