"""The server's limits in time that uvicorn does not set: a deadline on each request's head, and
a shutdown that ends open streams with an error event inside the grace period.

    uvicorn.run(app, http=DeadlineHTTPProtocol, timeout_graceful_shutdown=25)  # what `serve` does
    uvicorn --factory adaptive_router.service:app_from_environment \\
        --http adaptive_router.service:DeadlineHTTPProtocol --timeout-graceful-shutdown 25

uvicorn's ``timeout_keep_alive`` only runs between requests and is reset by every byte, so a
client trickling a request line holds a connection forever; :class:`DeadlineHTTPProtocol` (uvicorn's
own protocol, httptools or h11) gives the head ``server.header_timeout_s`` from its first byte
(408, then the connection closes) and a connection that sends nothing as long (closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

from uvicorn.protocols.http.auto import AutoHTTPProtocol

from .._json import dumps
from ..pipeline._deadlines import Drain, drain_after

__all__ = ["DeadlineHTTPProtocol", "drain_on_terminate"]

DEFAULT_HEADER_TIMEOUT_S = 10.0
_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def drain_on_terminate(drain: Drain, grace_s: float) -> Iterator[None]:
    """While serving: SIGTERM (or SIGINT) also starts ``drain``, so that open requests end by
    :func:`drain_after` ``(grace_s)``; the server's own handler still runs. Only where a server
    has installed a handler, in the main thread (uvicorn does, before the lifespan starts)."""
    previous: dict[int, Callable[[int, FrameType | None], Any]] = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: h for sig in _SIGNALS if callable(h := signal.getsignal(sig))}
    loop = asyncio.get_running_loop()

    def handler(signum: int, frame: FrameType | None) -> None:
        loop.call_soon_threadsafe(drain.begin, drain_after(grace_s))
        previous[signum](signum, frame)

    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            if signal.getsignal(sig) is handler:
                signal.signal(sig, old)


def _timeout_answer(seconds: float) -> bytes:
    message = f"the request's headers did not arrive within {seconds:g} s (server.header_timeout_s)"
    error = {"message": message, "type": "invalid_request_error", "param": None, "code": "request_timeout"}
    body = dumps({"error": error})
    head = (
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


# uvicorn's AutoHTTPProtocol is a variable (httptools' or h11's class, chosen at import), which
# mypy cannot take as a base class: the one place it is used as one.
class DeadlineHTTPProtocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
    """uvicorn's HTTP protocol, with ``server.header_timeout_s`` for each request's head."""

    _head_timer: asyncio.TimerHandle | None = None
    _head_started = False

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)
        self._arm()  # a connection that never sends a byte is closed as well

    def data_received(self, data: bytes) -> None:
        if not self._head_started and self._between_requests():
            self._head_started = True
            self._arm()  # a new request's head starts: it has the timeout from its first byte
        super().data_received(data)

    def on_response_complete(self) -> None:
        self._head_started = False
        self._disarm()  # idle until the next request: uvicorn's keep-alive timeout
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _between_requests(self) -> bool:
        cycle = self.cycle
        return cycle is None or bool(cycle.response_complete)

    def _timeout_s(self) -> float:
        running = self.app_state.get("running")
        try:
            return float(running.service.settings.server.header_timeout_s)
        except AttributeError:  # before the lifespan has started
            return DEFAULT_HEADER_TIMEOUT_S

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(self._timeout_s(), self._expired)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _expired(self) -> None:
        self._head_timer = None
        if not self._between_requests() or self.transport.is_closing():
            return  # the head arrived: the request is being served
        if self._head_started:
            self.transport.write(_timeout_answer(self._timeout_s()))
        self.transport.close()
