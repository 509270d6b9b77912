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
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import pytest
import redis

__all__ = [
    "RedisCluster",
    "RedisSentinel",
    "RedisServer",
    "free_port",
    "redis_cluster",
    "redis_cluster_fixture",
    "redis_server",
    "redis_server_fixture",
    "start_cluster",
    "start_sentinel",
]

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

    def __init__(
        self, binary: str, workdir: Path, port: int | None = None, extra_args: Sequence[str] = ()
    ) -> None:
        self.binary = binary
        self.workdir = workdir
        self.extra_args = list(extra_args)
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
            self._argv(), stdout=self._log, stderr=subprocess.STDOUT, cwd=self.workdir
        )
        self._wait_until_ready()

    def _argv(self) -> list[str]:
        return [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--dir", str(self.workdir),
            *self.extra_args,
        ]  # fmt: skip

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

    def pause(self) -> None:
        """SIGSTOP: alive but silent (connections accepted by the kernel, never answered)."""
        if self._process is not None:
            self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self._process is not None:
            self._process.send_signal(signal.SIGCONT)

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


# --- a real Redis Cluster ----------------------------------------------------------------------


def _client(port: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=1.0, socket_connect_timeout=1.0)


class RedisCluster:
    """``masters`` ``redis-server`` processes with ``cluster-enabled yes`` (no replicas), each in
    its own directory on a free loopback port with a free cluster-bus port, joined with
    ``redis-cli --cluster create``. A node killed and started again keeps its identity and its
    slots (its ``nodes.conf`` is kept) but none of its data, as after a crash without persistence.

        cluster = start_cluster(tmp_path)
        cluster.url                       # "redis+cluster://127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3"
        node = cluster.node_for("{adaptive-router}")
        node.kill(); ...; node.start(); cluster.wait_ok()
    """

    def __init__(
        self, binary: str, cli: str, workdir: Path, masters: int = 3, node_timeout_ms: int = 1000
    ) -> None:
        self.cli = cli
        self.nodes: list[RedisServer] = []
        for i in range(masters):
            directory = workdir / f"node{i}"
            directory.mkdir(parents=True, exist_ok=True)
            bus = free_port()
            args = [
                "--cluster-enabled", "yes",
                "--cluster-port", str(bus),
                "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(node_timeout_ms),
            ]  # fmt: skip
            self.nodes.append(RedisServer(binary, directory, extra_args=args))

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run(
            [self.cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=30,
        )
        self.wait_ok()

    def info(self, node: RedisServer) -> dict[str, Any]:
        """CLUSTER INFO of ``node``; empty when it does not answer."""
        try:
            with _client(node.port) as client:
                info: dict[str, Any] = client.cluster("INFO")
                return info
        except redis.RedisError:
            return {}

    def wait_ok(self, limit_s: float = START_TIMEOUT_S * 3) -> None:
        """Until every node says ``cluster_state:ok`` (a restarted node takes a few seconds)."""
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            if all(node.running and self.info(node).get("cluster_state") == "ok" for node in self.nodes):
                return
            time.sleep(0.05)
        raise RuntimeError(f"cluster not ok within {limit_s:g} s: {[self.info(n) for n in self.nodes]}")

    def slot(self, key: str) -> int:
        with _client(self.nodes[0].port) as client:
            return int(client.cluster("KEYSLOT", key))

    def node_for(self, key: str) -> RedisServer:
        """The master serving ``key``'s slot."""
        slot = self.slot(key)
        for node in self.nodes:
            if any(low <= slot <= high for low, high in self.slot_ranges(node)):
                return node
        raise LookupError(f"no node serves slot {slot}")

    def slot_ranges(self, node: RedisServer) -> list[tuple[int, int]]:
        """The slot ranges ``node`` itself serves (from its CLUSTER SLOTS)."""
        with _client(node.port) as client:
            rows = client.execute_command("CLUSTER SLOTS")
        return [(int(row[0]), int(row[1])) for row in rows if int(row[2][1]) == node.port]

    def move_slot(self, slot: int, target: RedisServer) -> None:
        """Migrate ``slot`` and its keys to ``target``, the way ``redis-cli --cluster reshard``
        does: IMPORTING/MIGRATING, MIGRATE the keys, then every node learns the new owner."""
        source = next(n for n in self.nodes if any(lo <= slot <= hi for lo, hi in self.slot_ranges(n)))
        if source is target:
            return
        with _client(source.port) as src, _client(target.port) as dst:
            source_id, target_id = src.cluster("MYID").decode(), dst.cluster("MYID").decode()
            dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", source_id)
            src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", target_id)
            for _ in range(1000):  # bounded: a test's few keys
                keys = src.execute_command("CLUSTER GETKEYSINSLOT", slot, 100)
                if not keys:
                    break
                src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
        for node in self.nodes:
            with _client(node.port) as client:
                client.execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)

    def keys(self, node: RedisServer, pattern: str) -> list[str]:
        """Keys matching ``pattern`` stored on ``node`` (KEYS: fine for a test's few keys)."""
        with _client(node.port) as client:
            return sorted(key.decode() for key in client.keys(pattern))

    def stop(self) -> None:
        for node in self.nodes:
            node.resume()
            node.stop()


def start_cluster(workdir: Path, masters: int = 3, node_timeout_ms: int = 1000) -> RedisCluster:
    """A running cluster (the caller stops it); RuntimeError when the binaries are missing."""
    binary, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if binary is None or cli is None:
        raise RuntimeError("redis-server/redis-cli are not on PATH (apt-get install redis-server)")
    cluster = RedisCluster(binary, cli, workdir, masters, node_timeout_ms)
    try:
        cluster.start()
    except BaseException:
        cluster.stop()
        raise
    return cluster


@pytest.fixture(name="redis_cluster")
def redis_cluster_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A running 3-master Redis Cluster on free loopback ports, stopped after the test."""
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.skip("redis-server/redis-cli are not on PATH (Debian/Ubuntu: apt-get install redis-server)")
    cluster = start_cluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield cluster
    finally:
        cluster.stop()


redis_cluster = redis_cluster_fixture


# --- Sentinel ----------------------------------------------------------------------------------


class RedisSentinel(RedisServer):
    """``redis-server --sentinel`` watching the primary ``master`` (named ``name``) on 127.0.0.1,
    quorum 1, down after ``down_after_ms``: a failover takes a few seconds."""

    def __init__(
        self, binary: str, workdir: Path, master: RedisServer, name: str = "main", down_after_ms: int = 1000
    ) -> None:
        super().__init__(binary, workdir)
        self.name = name
        self.config = workdir / "sentinel.conf"
        self.config.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {workdir}\n"
            f"sentinel monitor {name} 127.0.0.1 {master.port} 1\n"
            f"sentinel down-after-milliseconds {name} {down_after_ms}\n"
            f"sentinel failover-timeout {name} 5000\n"
        )

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.port}/{self.name}/0"

    def _argv(self) -> list[str]:
        return [self.binary, str(self.config), "--sentinel"]

    def primary_port(self) -> int | None:
        """The port of the primary this sentinel names now (None if it does not answer)."""
        try:
            with _client(self.port) as client:
                host_port = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.name)
        except redis.RedisError:
            return None
        return int(host_port[1]) if host_port else None


def start_sentinel(
    workdir: Path, down_after_ms: int = 1000
) -> tuple[RedisServer, RedisServer, RedisSentinel]:
    """A primary, its replica and one sentinel, all running (the caller stops them)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not on PATH (apt-get install redis-server)")
    started: list[RedisServer] = []
    try:
        for name in ("primary", "replica"):
            (workdir / name).mkdir(parents=True, exist_ok=True)
        primary = RedisServer(binary, workdir / "primary")
        primary.start()
        started.append(primary)
        replica = RedisServer(
            binary, workdir / "replica", extra_args=["--replicaof", "127.0.0.1", str(primary.port)]
        )
        replica.start()
        started.append(replica)
        (workdir / "sentinel").mkdir(parents=True, exist_ok=True)
        sentinel = RedisSentinel(binary, workdir / "sentinel", primary, down_after_ms=down_after_ms)
        sentinel.start()
        started.append(sentinel)
    except BaseException:
        for server in started:
            server.stop()
        raise
    return primary, replica, sentinel
