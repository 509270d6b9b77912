"""A real ``redis-server`` for tests, on a free loopback port, never 6379.

    from tests.redis_server import redis_server  # noqa: F401

    def test_something(redis_server: RedisServer) -> None:
        redis_server.url        # "redis://127.0.0.1:<port>/0"
        redis_server.kill()     # SIGKILL: a crash, connections drop at once
        redis_server.start()    # back on the same port, empty (no persistence)

The test is skipped, with a message saying what to install, when ``redis-server`` is not on
PATH. Each test gets its own server (function scope), stopped at teardown.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

__all__ = ["RedisServer", "free_port", "redis_server", "redis_server_fixture"]

REDIS_DEFAULT_PORT = 6379
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
POLL_INTERVAL_S = 0.01


def free_port() -> int:
    """A loopback port nobody listens on right now (never Redis's default 6379)."""
    for _ in range(20):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port != REDIS_DEFAULT_PORT:
            return port
    raise RuntimeError("no free loopback port found")


def _pings(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` process in ``workdir``; ``start``/``kill``/``stop`` may repeat."""

    def __init__(self, binary: str, workdir: Path, port: int | None = None) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = port if port is not None else free_port()
        if self.port == REDIS_DEFAULT_PORT:
            raise ValueError("tests must never use port 6379")
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start (or restart) on the same port; returns once it answers PING."""
        if self.running:
            return
        self._close_log()
        self._log = (self.workdir / "redis.log").open("ab")
        self._process = subprocess.Popen(
            [
                self.binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--daemonize", "no",
                "--dir", str(self.workdir),
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
        )  # fmt: skip
        self._wait_until_ready()

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if _pings(self.port):
                return
            if not self.running:
                break
            time.sleep(POLL_INTERVAL_S)
        self.stop()
        raise RuntimeError(f"redis-server on port {self.port} did not answer PING:\n{self._log_tail()}")

    def kill(self) -> None:
        """SIGKILL, as in a crash: no shutdown, open connections reset."""
        self._end(signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM and wait (SIGKILL if it lingers); safe to call twice."""
        self._end(signal.SIGTERM)
        self._close_log()

    def _end(self, sig: signal.Signals) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(sig)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT_S)

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def _log_tail(self) -> str:
        path = self.workdir / "redis.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else "(no log)"


@pytest.fixture(name="redis_server")
def redis_server_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A running ``redis-server`` on a free loopback port, stopped after the test."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not on PATH (Debian/Ubuntu: apt-get install redis-server)")
    server = RedisServer(binary, tmp_path_factory.mktemp("redis"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


# The fixture under its own name too, for `from tests.redis_server import redis_server`.
# (Importing `redis_server_fixture` instead spares ruff's F811 on test parameters.)
redis_server = redis_server_fixture
