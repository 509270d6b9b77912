"""Run a real uvicorn server for an ASGI app in a background thread, for integration tests.

Usage::

    from tests.servers import running_server

    with running_server(app) as base_url:
        httpx.get(base_url + "/health")
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import uvicorn
from starlette.types import ASGIApp

__all__ = ["free_port", "running_server"]

_START_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 10.0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (prefer ``running_server``, which cannot race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def running_server(app: ASGIApp, host: str = "127.0.0.1") -> Iterator[str]:
    """Serve ``app`` on a free port of ``host``; yield its base URL; stop it on exit."""
    # Bind here and hand the listening socket to uvicorn, so no other process can take the port
    # between choosing it and serving on it.
    # proto must be IPPROTO_TCP, not the default 0: asyncio only sets TCP_NODELAY on accepted
    # sockets whose proto says TCP, and without it every keep-alive request stalls ~40 ms on
    # Nagle's algorithm against delayed ACKs.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    port: int = sock.getsockname()[1]
    # ws="none": tests never need websockets, and importing them can raise deprecation warnings.
    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", lifespan="on", ws="none", timeout_graceful_shutdown=2
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=f"uvicorn-{port}", daemon=True
    )
    thread.start()
    try:
        _wait_until_serving(server, thread, host, port)
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(_STOP_TIMEOUT_S)
        if thread.is_alive():  # connections that would not close: stop without waiting for them
            server.force_exit = True
            thread.join(_STOP_TIMEOUT_S)
        sock.close()


def _wait_until_serving(server: uvicorn.Server, thread: threading.Thread, host: str, port: int) -> None:
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        if not thread.is_alive():
            raise RuntimeError(f"uvicorn on {host}:{port} exited during start-up")
        if server.started and _accepts(host, port):
            return
        time.sleep(0.01)
    server.should_exit = True
    raise TimeoutError(f"uvicorn on {host}:{port} did not start within {_START_TIMEOUT_S} s")


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False
