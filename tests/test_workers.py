"""State across processes: ``serve --workers 2`` and two replicas behind one Redis answer
``/feedback`` for each other's request ids, and ``/metrics`` on any worker counts all of them.

Which worker serves a request depends on which accepts the connection; each test holds
connections whose worker it knows (``/metrics.json`` names its pid) and cannot silently
reconnect (``http.client`` with ``auto_open`` off), so "asked one worker, scored on the
other" is what happens, not what probably happens.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.process_fixtures import (
    CHAT_BODY,
    HOST,
    Catalogue,
    ProcessGroup,
    Served,
    free_port,
    redis_binary,
    router_env,
    scenario,
    start_redis,
    wait_for,
)

ROOT = Path(__file__).resolve().parent.parent

SECOND_WORKER_LIMIT_S = 120.0
START_LIMIT_S = 120.0
POLL_S = 0.05


class Pinned:
    """One keep-alive connection to one worker; raises rather than reconnecting elsewhere."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection(HOST, port, timeout=10)
        self.conn.connect()
        self.conn.auto_open = 0  # a dropped connection fails loudly instead of landing on another worker
        self.pid = self.get("/metrics.json")[1]["pid"]

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"content-type": "application/json"} if payload is not None else {}
        self.conn.request(method, path, body=payload, headers=headers)
        response = self.conn.getresponse()
        raw = response.read()
        is_json = response.getheader("content-type", "").startswith("application/json")
        return response.status, json.loads(raw) if is_json else raw.decode()

    def get(self, path: str) -> tuple[int, Any]:
        return self.request("GET", path)

    def post(self, path: str, body: Any) -> tuple[int, Any]:
        return self.request("POST", path, body)

    def close(self) -> None:
        self.conn.close()


def two_workers(port: int) -> tuple[Pinned, Pinned]:
    """Connections to two different workers. ``serve`` is ready when one worker is; the other may
    still be starting, so new connections are tried until one reaches it (bounded in count and time)."""
    first = Pinned(port)
    deadline = time.monotonic() + SECOND_WORKER_LIMIT_S
    for _ in range(int(SECOND_WORKER_LIMIT_S / POLL_S)):
        other = Pinned(port)
        if other.pid != first.pid:
            return first, other
        other.close()
        if time.monotonic() >= deadline:
            break
        time.sleep(POLL_S)
    raise AssertionError(f"no connection reached a second worker within {SECOND_WORKER_LIMIT_S:g} s")


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if redis_binary() is None:
        pytest.skip("redis-server is not on PATH (Debian/Ubuntu: apt-get install redis-server)")
    server = start_redis(tmp_path_factory.mktemp("workers-redis"))
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="module")
def group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ProcessGroup, Catalogue, Served]]:
    work = tmp_path_factory.mktemp("workers")
    with ProcessGroup(work) as processes:
        catalogue = Catalogue.write(work)
        sim = processes.simulator(catalogue, scenario())
        yield processes, catalogue, sim


def ready(served: Served) -> Served:
    """``served`` once ``/ready`` answers: workers are whole interpreters, slow to start on a busy
    machine, so the bound is generous (and a process that exits fails at once)."""

    def up() -> bool:
        if not served.alive:
            raise AssertionError(f"{served.name} exited:\n{served.log_tail()}")
        try:
            return served.http.get("/ready", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    assert wait_for(up, START_LIMIT_S), f"{served.name} not ready:\n{served.log_tail()}"
    return served


def redis_env(url: str) -> dict[str, str]:
    """Redis with timeouts no busy test machine reaches: these tests are about who sees what."""
    return {"REDIS__URL": url, "REDIS__CONNECT_TIMEOUT_MS": "2000", "REDIS__OP_TIMEOUT_MS": "2000"}


def answered(conn: Pinned) -> tuple[str, str]:
    status, body = conn.post("/v1/chat/completions", CHAT_BODY)
    assert status == 200, body
    return body["routing"]["request_id"], body["id"]


def ok(ids: tuple[str, str]) -> dict[str, Any]:
    return {"ok": True, "request_id": ids[0]}


def test_two_workers_score_each_others_requests_and_sum_metrics(
    group: tuple[ProcessGroup, Catalogue, Served], redis_url: str
) -> None:
    processes, catalogue, sim = group
    env = router_env(catalogue, REDIS__PREFIX="workers", **redis_env(redis_url))
    served = ready(processes.serve("workers", sim, env, args=("--workers", "2"), wait=False))
    a, b = two_workers(served.port)
    try:
        from_a, from_b = [answered(a) for _ in range(3)], [answered(b) for _ in range(2)]
        # Each worker takes feedback for the other's requests: by routing.request_id and by the answer's id.
        assert b.post("/feedback", {"request_id": from_a[0][0], "score": 1.0}) == (200, ok(from_a[0]))
        assert a.post("/feedback", {"request_id": from_b[0][1], "score": 0.0}) == (200, ok(from_b[0]))
        # Scored once across workers: the second score, on either worker, is refused.
        again = a.post("/feedback", {"request_id": from_a[0][1], "score": 0.5})
        assert again[0] == 409 and again[1]["error"]["code"] == "already_scored", again
        # /metrics on either worker counts all five answers; /metrics.json is the worker's own.
        for conn in (a, b):
            status, text = conn.get("/metrics")
            assert status == 200 and _answered_total(text) == 5, text
        own = [conn.get("/metrics.json")[1]["requests"]["by_outcome"]["ok"] for conn in (a, b)]
        assert own == [3, 2]
        # One access line per request, the router's: uvicorn's is off in workers too.
        assert "uvicorn.access" not in served.log_path.read_text(), served.log_tail()
    finally:
        a.close()
        b.close()


def _answered_total(exposition: str) -> float:
    pattern = re.compile(r'^adaptive_router_requests_total\{model="[^"]+",outcome="ok"\} (\S+)$', re.M)
    return sum(float(value) for value in pattern.findall(exposition))


def test_two_replicas_behind_one_redis_score_each_others_requests(
    group: tuple[ProcessGroup, Catalogue, Served], redis_url: str
) -> None:
    processes, catalogue, sim = group
    env = router_env(catalogue, REDIS__PREFIX="replicas", **redis_env(redis_url))
    replicas = [processes.serve(name, sim, env, wait=False) for name in ("replica-a", "replica-b")]
    for replica in replicas:
        ready(replica)
    a, b = (Pinned(replica.port) for replica in replicas)
    try:
        id_a, answer_id_a = answered(a)
        id_b, _ = answered(b)
        assert b.post("/feedback", {"request_id": id_a, "score": 1.0}) == (200, ok((id_a, "")))
        assert a.post("/feedback", {"request_id": id_b, "score": 1.0}) == (200, ok((id_b, "")))
        again = a.post("/feedback", {"request_id": answer_id_a, "score": 1.0})
        assert again[0] == 409, again  # B scored it
        unknown = a.post("/feedback", {"request_id": "req-" + "0" * 24, "score": 1.0})
        assert unknown[0] == 404 and unknown[1]["error"]["param"] == "request_id"
    finally:
        a.close()
        b.close()


def test_several_workers_without_redis_say_so_at_start(group: tuple[ProcessGroup, Catalogue, Served]) -> None:
    processes, catalogue, sim = group
    served = processes.serve("no-redis", sim, router_env(catalogue), args=("--workers", "2"), wait=False)
    assert wait_for(lambda: "2 WORKERS WITHOUT REDIS" in served.log_path.read_text(), START_LIMIT_S)


def test_a_reload_keeps_what_the_command_line_set(group: tuple[ProcessGroup, Catalogue, Served]) -> None:
    # serve --port P, then a reload that changes nothing: no 'server.port' to restart for
    processes, catalogue, sim = group
    served = processes.serve("cli-reload", sim, router_env(catalogue, SERVER__ADMIN_KEYS=["adm"]))
    reloaded = served.http.post("/admin/reload", headers={"authorization": "Bearer adm"})
    assert reloaded.status_code == 200, reloaded.text
    assert reloaded.json()["restart_needed"] == [] and reloaded.json()["changed"] == [], reloaded.text


def test_serve_on_a_port_in_use_exits_2_naming_it(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind((HOST, free_port()))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**router_env(Catalogue.write(tmp_path)), "ROUTER_SIMULATOR_URL": "http://127.0.0.1:9/v1"}
        done = subprocess.run(
            [sys.executable, "-m", "adaptive_router", "serve", "--host", HOST, "--port", str(port)],
            cwd=tmp_path,
            env=_env(env),
            capture_output=True,
            text=True,
            timeout=START_LIMIT_S,
        )
    assert done.returncode == 2, done.stderr
    assert f"{HOST}:{port} is already in use" in done.stderr and "server.port" in done.stderr
    assert "Traceback" not in done.stderr


def _env(extra: dict[str, str]) -> dict[str, str]:
    """This environment less ROUTER_* and the upstream key (nothing leaves 127.0.0.1), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTER_") and k != "OPENROUTER_API_KEY"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return {**env, **extra}


RECORD = """
import sys
from prometheus_client import Counter
from adaptive_router.pipeline import Metrics

metrics = Metrics()
metrics.request("lab/a", "ok", 0.01, 10.0, 1, False, False)
metrics.breaker("lab/a", sys.argv[1])
Counter("adaptive_router_added", "A counter another module adds.", registry=metrics.registry).inc()
metrics.set_info(upstream="simulated")
print(metrics.prometheus()[0].decode())
"""


def test_metrics_in_multiprocess_mode_sum_workers_once_each(tmp_path: Path) -> None:
    """Three processes sharing one PROMETHEUS_MULTIPROC_DIR, as ``serve --workers 3`` runs them:
    each exposition counts all three, every family once, and keeps its own info."""
    env = _env({"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)})
    texts = [
        subprocess.run(
            [sys.executable, "-c", RECORD, state],
            env=env,
            capture_output=True,
            text=True,
            timeout=START_LIMIT_S,
            check=True,
        ).stdout
        for state in ("closed", "closed", "open")
    ]
    last = texts[-1]
    assert 'adaptive_router_requests_total{model="lab/a",outcome="ok"} 3.0' in last
    assert "adaptive_router_added_total 3.0" in last
    assert 'adaptive_router_breaker_state{model="lab/a"} 2.0' in last  # the worst any live worker sees
    assert 'adaptive_router_info{upstream="simulated"} 1.0' in last
    type_lines = [line for line in last.splitlines() if line.startswith("# TYPE")]
    assert len(type_lines) == len(set(type_lines)), "a family reported twice"


def test_sighup_reloads_the_settings_in_every_worker_without_restarting_them(
    group: tuple[ProcessGroup, Catalogue, Served], tmp_path: Path
) -> None:
    """uvicorn's supervisor would restart the workers on SIGHUP; ``serve`` reloads them in place.
    The pinned connections would break if either worker were replaced."""
    processes, catalogue, sim = group
    settings = tmp_path / "settings.yaml"
    settings.write_text(json.dumps({"routing": {"top_k": 3}}))
    env = {**router_env(catalogue), "ROUTER_SETTINGS_FILE": str(settings)}
    served = ready(processes.serve("hup", sim, env, args=("--workers", "2"), wait=False))
    a, b = two_workers(served.port)
    try:
        settings.write_text(json.dumps({"routing": {"top_k": 2}}))
        served.proc.send_signal(signal.SIGHUP)

        def reloaded(conn: Pinned) -> bool:
            last = conn.get("/ready")[1]["reload"]
            return last is not None and last["source"] == "SIGHUP" and last["ok"] is True

        for conn in (a, b):
            assert wait_for(lambda conn=conn: reloaded(conn), 30.0), served.log_tail()
            assert conn.get("/ready")[1]["reload"]["changed"] == ["routing.top_k"]
            assert conn.get("/metrics.json")[1]["pid"] == conn.pid  # the same process, still serving
        assert "restarting processes" not in served.log_path.read_text()
    finally:
        a.close()
        b.close()
