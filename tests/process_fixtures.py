"""Real processes for the replica, resilience and soak tests: simulators and routers on 127.0.0.1.

    with ProcessGroup(tmp_path) as group:
        catalogue = Catalogue.write(tmp_path)
        sim = group.simulator(catalogue, scenario())          # adaptive-router simulate-upstream
        a = group.router("a", sim, router_env(catalogue, LEARNING__REPLICA_ID="a"))  # uvicorn
        a.post("/route", {"prompt": "hi"})
        a.rss_kb()                 # VmRSS from /proc
        a.terminate()              # SIGTERM; a.wait() gives the exit code
        Load([a.url], count=500, rate_per_s=50).start().join()   # a Tally of statuses

Every process is started with a clean environment (no ROUTER_* or OPENROUTER_API_KEY from the
shell: nothing may leave 127.0.0.1), in the test's own directory (no settings.yaml or .env is
picked up), and is killed when the group closes, whatever happened. The catalogue is an
OpenRouter-shaped models file with equal prices, and equal priors set through an overlay, so
that only what a router learns tells its models apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from tests.redis_server import RedisServer

__all__ = [
    "CHAT_BODY",
    "HOST",
    "MODELS",
    "Catalogue",
    "Load",
    "ProcessGroup",
    "Served",
    "Tally",
    "free_port",
    "redis_binary",
    "router_env",
    "scenario",
    "start_redis",
    "wait_for",
]

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent
MODELS = ("lab/a", "lab/b", "lab/c", "lab/d")
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 3.0
HTTP_TIMEOUT_S = 10.0
POLL_S = 0.05
CHAT_BODY: dict[str, Any] = {
    "model": "auto:speed",
    "max_tokens": 4,
    "messages": [{"role": "user", "content": "Say hi."}],
}


def free_port() -> int:
    """A loopback port that was free a moment ago (never Redis's 6379)."""
    for _ in range(20):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOST, 0))
            port = int(sock.getsockname()[1])
        if port != 6379:
            return port
    raise RuntimeError("no free loopback port")


def wait_for(condition: Callable[[], bool], limit_s: float, poll_s: float = POLL_S) -> bool:
    """Poll ``condition`` until it holds or ``limit_s`` passes (bounded in count and time)."""
    deadline = time.monotonic() + limit_s
    for _ in range(int(limit_s / poll_s) + 2):
        if condition():
            return True
        if time.monotonic() >= deadline:
            break
        time.sleep(poll_s)
    return condition()


def redis_binary() -> str | None:
    return shutil.which("redis-server")


def start_redis(workdir: Path) -> RedisServer:
    """A ``redis-server`` on a free loopback port in ``workdir`` (the caller stops it)."""
    binary = redis_binary()
    if binary is None:
        raise RuntimeError("redis-server is not on PATH (apt-get install redis-server)")
    server = RedisServer(binary, workdir)
    server.start()
    return server


@dataclass(frozen=True)
class Catalogue:
    """The files a simulator and a router read: models (OpenRouter's shape) and equal priors."""

    models: Path
    overlay: Path
    ids: tuple[str, ...]

    @classmethod
    def write(
        cls, directory: Path, ids: Sequence[str] = MODELS, ttft_s: float = 0.02, tpot_s: float = 1e-5
    ) -> Catalogue:
        entries = [
            {
                "id": model_id,
                "name": model_id,
                "context_length": 8192,
                "pricing": {"prompt": "0.000001", "completion": "0.000002"},
                "architecture": {"input_modalities": ["text"], "output_modalities": ["text"]},
                "top_provider": {"context_length": 8192, "max_completion_tokens": 1024},
                "supported_parameters": ["max_tokens", "temperature"],
            }
            for model_id in ids
        ]
        models = directory / "models.json"
        models.write_text(json.dumps({"data": entries}))
        overlay = directory / "priors.yaml"
        # Fixed-point on purpose: the overlay is read as YAML, and YAML 1.1 takes "1e-05" for a string.
        overlay.write_text(f'"*": {{ttft_s: {ttft_s:.9f}, tpot_s: {tpot_s:.9f}, quality: 0.5}}\n')
        return cls(models, overlay, tuple(ids))

    def env(self) -> dict[str, str]:
        return {"ROUTER_CATALOGUE__SOURCE": str(self.models), "ROUTER_CATALOGUE__OVERLAY": str(self.overlay)}


def scenario(
    events: Sequence[Mapping[str, Any]] = (),
    models: Mapping[str, Mapping[str, Any]] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """A simulator scenario in real time (time_scale 1) with no random faults and short answers:
    lab/a answers in ~4 ms, the others in ~20 ms, unless ``models`` says otherwise."""
    steady = {"tpot_s": 1e-5, "ttft_sigma": 0.05, "tpot_sigma": 0.0, "tail_prob": 0.0}
    return {
        "seed": 3,
        "time_scale": 1.0,
        "error_rate": 0.0,
        "rate_limit_rate": 0.0,
        "output_tokens_median": 4,
        "output_tokens_sigma": 0.0,
        "models": models or {"*": {**steady, "ttft_s": 0.02}, "lab/a": {"ttft_s": 0.004}},
        "events": [dict(e) for e in events],
        **fields,
    }


def router_env(catalogue: Catalogue, **settings: Any) -> dict[str, str]:
    """Environment for a router: the catalogue, response cache off (every request is routed),
    greedy, latencies read on a millisecond scale; ``settings`` as ROUTER_* values."""
    env = {
        **catalogue.env(),
        "ROUTER_UPSTREAM__SIMULATE": "always",
        "ROUTER_CACHE__ENABLED": "false",
        "ROUTER_EXPLORATION__POLICY": "greedy",
        "ROUTER_EXPLORATION__SEED": "0",
        "ROUTER_ROUTING__LATENCY_SCALE_S": "[0.001, 10.0]",
    }
    for key, value in settings.items():
        env[f"ROUTER_{key.upper()}"] = value if isinstance(value, str) else json.dumps(value)
    return env


@dataclass
class Served:
    """One server process on 127.0.0.1 and an HTTP client for it."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    ready_path: str = "/health"
    http: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.http = httpx.Client(base_url=self.url, timeout=HTTP_TIMEOUT_S)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_ready(self) -> None:
        """Until ``ready_path`` answers 200 (bounded); raises with the log's tail if it exits."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if not self.alive:
                raise RuntimeError(f"{self.name} exited during start-up:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if self.http.get(self.ready_path, timeout=1.0).status_code == 200:
                    return
            time.sleep(POLL_S)
        raise TimeoutError(f"{self.name} was not ready within {START_TIMEOUT_S:g} s:\n{self.log_tail()}")

    def get(self, path: str) -> Any:
        response = self.http.get(path)
        response.raise_for_status()
        return response.json()

    def post(self, path: str, body: Mapping[str, Any]) -> httpx.Response:
        return self.http.post(path, json=dict(body))

    def rss_kb(self) -> int:
        """Resident memory (VmRSS) of the process, in kB; 0 where /proc is not there."""
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def terminate(self) -> None:
        if self.alive:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        return self.proc.wait(timeout_s)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers; safe to call twice."""
        self.http.close()
        if self.alive:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT_S)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class ProcessGroup:
    """Starts server processes in ``workdir``; closing the group stops every one of them."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[Served] = []

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        for served in reversed(self.started):
            served.stop()

    def simulator(
        self, catalogue: Catalogue, scenario: Mapping[str, Any], name: str = "sim", *, wait: bool = True
    ) -> Served:
        """``adaptive-router simulate-upstream`` with ``scenario`` (written to a JSON file)."""
        path = self.workdir / f"{name}-scenario.json"
        path.write_text(json.dumps(dict(scenario)))
        port = free_port()
        cmd = [sys.executable, "-m", "adaptive_router", "simulate-upstream", "--scenario", str(path)]
        cmd += ["--host", HOST, "--port", str(port)]
        return self._start(name, cmd, catalogue.env(), port, "/health", wait)

    def router(
        self,
        name: str,
        simulator: Served,
        env: Mapping[str, str],
        *,
        port: int | None = None,
        wait: bool = True,
    ) -> Served:
        """uvicorn on the factory ``adaptive_router.service:app_from_environment``."""
        port = port or free_port()
        cmd = [sys.executable, "-m", "uvicorn", "adaptive_router.service:app_from_environment", "--factory"]
        cmd += ["--host", HOST, "--port", str(port), "--no-access-log", "--log-level", "info", "--ws", "none"]
        env = {**env, "ROUTER_SIMULATOR_URL": simulator.url + "/v1"}
        return self._start(name, cmd, env, port, "/ready", wait)

    def serve(
        self,
        name: str,
        simulator: Served,
        env: Mapping[str, str],
        *,
        wait: bool = True,
        args: Sequence[str] = (),
    ) -> Served:
        """The documented way to run a replica: ``adaptive-router serve`` (its own ``uvicorn.run``);
        ``args`` are more flags, e.g. ``("--workers", "2")``."""
        port = free_port()
        cmd = [sys.executable, "-m", "adaptive_router", "serve", "--host", HOST, "--port", str(port), *args]
        env = {**env, "ROUTER_SIMULATOR_URL": simulator.url + "/v1"}
        return self._start(name, cmd, env, port, "/ready", wait)

    def _start(
        self, name: str, cmd: list[str], env: Mapping[str, str], port: int, ready: str, wait: bool
    ) -> Served:
        log_path = self.workdir / f"{name}.log"
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                cmd,
                cwd=self.workdir,
                env=_child_env(env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        served = Served(name, proc, port, log_path, ready)
        self.started.append(served)
        if wait:
            served.wait_ready()
        return served


def _child_env(extra: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTER_") and k != "OPENROUTER_API_KEY"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


# --- paced load ------------------------------------------------------------------------------


@dataclass
class Tally:
    """What a load run sent and what came back: HTTP statuses, or the client error's name."""

    sent: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)  # "200", "502", "ReadTimeout", ...
    by_target: Counter[str] = field(default_factory=Counter)
    models: Counter[str] = field(default_factory=Counter)  # x-router-model of the 200s
    failed: list[tuple[int, str]] = field(default_factory=list)  # (request index, outcome) of the others

    @property
    def answered(self) -> int:
        return sum(n for outcome, n in self.outcomes.items() if outcome.isdigit())

    @property
    def ok(self) -> int:
        return self.outcomes["200"]

    def as_dict(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "answered": self.answered,
            "ok": self.ok,
            "outcomes": dict(sorted(self.outcomes.items())),
            "by_target": dict(self.by_target),
            "models": dict(sorted(self.models.items())),
        }


class Load:
    """``count`` requests at a steady ``rate_per_s``, round-robin over ``targets`` (base URLs),
    from an asyncio loop in a background thread: request i leaves at start + i / rate, at most
    ``concurrency`` at once. Bounded in count, and ``stop()`` ends it early; in-flight requests
    always finish (each within ``timeout_s``) and are counted.

        load = Load([a.url, b.url], count=1500, rate_per_s=75).start()
        load.wait_sent(100, limit_s=5)
        tally = load.join()
    """

    def __init__(
        self,
        targets: Sequence[str],
        count: int,
        rate_per_s: float,
        body: Mapping[str, Any] = CHAT_BODY,
        path: str = "/v1/chat/completions",
        concurrency: int = 32,
        timeout_s: float = 10.0,
    ) -> None:
        self.targets = list(targets)
        self.count = count
        self.rate = rate_per_s
        self.body = dict(body)
        self.path = path
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.tally = Tally()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="load", daemon=True)
        self._error: BaseException | None = None

    @property
    def sent(self) -> int:
        return self.tally.sent

    def start(self) -> Load:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def wait_sent(self, sent: int, limit_s: float) -> bool:
        return wait_for(lambda: self.tally.sent >= sent or not self._thread.is_alive(), limit_s, 0.01)

    def join(self, limit_s: float | None = None) -> Tally:
        """Wait for the run to end (by default: twice its planned length plus one request
        timeout: a bound, not a timing check; a busy machine sends on a slower schedule)."""
        limit = limit_s if limit_s is not None else 2.0 * self.count / self.rate + self.timeout_s + 15.0
        self._thread.join(limit)
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join(self.timeout_s + 5.0)
            raise TimeoutError(f"the load did not finish within {limit:.0f} s ({self.tally.sent} sent)")
        if self._error is not None:
            raise self._error
        return self.tally

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # handed to join(): a thread must not die silently
            self._error = exc

    async def _main(self) -> None:
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        async with httpx.AsyncClient(timeout=self.timeout_s, limits=limits) as client:
            gate = asyncio.Semaphore(self.concurrency)
            loop = asyncio.get_running_loop()
            tasks: set[asyncio.Task[None]] = set()
            start = loop.time()
            for i in range(self.count):
                if self._stop.is_set():
                    break
                delay = start + i / self.rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                await gate.acquire()
                target = self.targets[i % len(self.targets)]
                task = asyncio.create_task(self._one(client, i, target, gate))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                self.tally.sent += 1
            await asyncio.gather(*tasks)

    async def _one(self, client: httpx.AsyncClient, index: int, target: str, gate: asyncio.Semaphore) -> None:
        try:
            response = await client.post(target + self.path, json=self.body)
            outcome = str(response.status_code)
            if response.status_code == 200:
                self.tally.models[response.headers.get("x-router-model", "?")] += 1
        except httpx.HTTPError as exc:
            outcome = type(exc).__name__
        finally:
            gate.release()
        self.tally.outcomes[outcome] += 1
        self.tally.by_target[target] += 1
        if outcome != "200":
            self.tally.failed.append((index, outcome))
