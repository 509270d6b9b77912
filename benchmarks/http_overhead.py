"""What the HTTP service costs: the router's endpoints against a bare endpoint and a direct upstream call.

    python3 benchmarks/http_overhead.py            # both event loops, ~2 minutes
    python3 benchmarks/http_overhead.py --quick    # the fastest loop only, short runs, ~25 s
    python3 benchmarks/http_overhead.py --wait-quiet 120   # first wait (bounded) for an idle machine

Every server runs in its own process, started here on 127.0.0.1 and stopped at the end: the
simulated upstream (``adaptive-router simulate-upstream``, with a scenario of zero latency and no
errors, so that what is measured is overhead), the router (uvicorn on the factory
``adaptive_router.service:app_from_environment``, response cache off, so that every request is
routed) and a bare Starlette endpoint returning a small JSON, served with the same uvicorn
options. The load generator is wrk (a closed loop over keep-alive connections), or, without it,
``benchmarks/_load.py`` (asyncio + httpx), also in its own process. Each measured run follows a
warm-up run. The key rows run under ``--loop asyncio --http h11`` and, when uvloop and httptools
are installed, under ``--loop uvloop --http httptools``, to show what the ``speed`` extra buys.

One run reports: the bare endpoint, the upstream called directly, ``/route``, chat through the
router at 1 and 32 connections, the router's own decision p50 under that load (from its
``/metrics.json``), and, with ``--peer-python PATH`` naming an interpreter that has LiteLLM
installed (``litellm[proxy]``), LiteLLM's proxy in front of the same upstream.

Goals, as ratios within one run (machines here are shared and noisy): ``/route`` >= 50% of the
bare endpoint's requests/s at 32 connections; chat through the router >= 25% of the direct
upstream's requests/s at 32 connections, and <= 1 ms added p50 at one connection.
Writes benchmarks/results/http_overhead.json and prints a table.

    python3 benchmarks/http_overhead.py --quick --peer-python /opt/litellm/bin/python
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adaptive_router._bench import machine_info

if TYPE_CHECKING:
    from starlette.applications import Starlette

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
RESULTS = BENCH_DIR / "results" / "http_overhead.json"
HOST = "127.0.0.1"
START_TIMEOUT_S = 30.0
PEER_START_S = 180.0  # LiteLLM's proxy imports a great deal before it listens
STOP_TIMEOUT_S = 5.0
RUN_TIMEOUT_PAD_S = 30.0
MANY = 32
PROMPT = "Write a haiku about the sea."
MAX_TOKENS = 16
ROUTE_RATIO_GOAL = 0.50
CHAT_RATIO_GOAL = 0.25
ADDED_P50_GOAL_MS = 1.0
# Zero simulated latency (time_scale 0 skips every sleep; the tiny medians are belt and braces),
# no injected errors, rate limits or tail: the upstream answers as fast as it can.
SCENARIO: dict[str, Any] = {
    "seed": 1,
    "time_scale": 0.0,
    "error_rate": 0.0,
    "rate_limit_rate": 0.0,
    "models": {
        "*": {"ttft_s": 1e-6, "tpot_s": 1e-6, "error_rate": 0.0, "rate_limit_rate": 0.0, "tail_prob": 0.0}
    },
}
PACKAGES = [
    "adaptive-router",
    "uvicorn",
    "starlette",
    "httpx",
    "httpcore",
    "h11",
    "anyio",
    "pydantic",
    "orjson",
    "aiohttp",
    "numpy",
    "uvloop",
    "httptools",
]


def bare_app() -> Starlette:
    """The baseline: Starlette reading a POST body and answering a small fixed JSON (uvicorn factory)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    answer = {"model": "bare/endpoint", "fallbacks": ["a/b", "c/d"], "reason": "a fixed answer"}

    async def route(request: Request) -> Response:
        await request.body()
        return JSONResponse(answer)

    async def ready(request: Request) -> Response:
        return JSONResponse({"ready": True})

    return Starlette(routes=[Route("/route", route, methods=["POST"]), Route("/ready", ready)])


# --- servers -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """uvicorn's event loop and HTTP parser, the same for the router and the bare endpoint."""

    loop: str
    http: str

    @property
    def name(self) -> str:
        return f"{self.loop}+{self.http}"

    def uvicorn_args(self) -> list[str]:
        return [
            "--loop",
            self.loop,
            "--http",
            self.http,
            "--no-access-log",
            "--log-level",
            "warning",
            "--ws",
            "none",
            "--lifespan",
            "on",
        ]


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    base_url: str
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def child_env(extra: Mapping[str, str]) -> dict[str, str]:
    """This environment without router settings or API keys (nothing may leave 127.0.0.1), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTER_") and k != "OPENROUTER_API_KEY"}
    env.update(extra)
    return env


@contextlib.contextmanager
def running(
    name: str,
    cmd: list[str],
    env: Mapping[str, str],
    port: int,
    ready_path: str,
    log_dir: Path,
    start_timeout_s: float = START_TIMEOUT_S,
) -> Iterator[Server]:
    """Start ``cmd`` (a server on ``port``), wait until ``ready_path`` answers 200, stop it on exit."""
    log_path = log_dir / f"{name}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=dict(env), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
    server = Server(name, proc, f"http://{HOST}:{port}", log_path)
    try:
        _wait_ready(server, ready_path, start_timeout_s)
        yield server
    finally:
        _stop(proc)


def _wait_ready(server: Server, path: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited during start-up:\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(server.base_url + path, timeout=1.0) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{server.name} was not ready within {timeout_s:g} s:\n{server.log_tail()}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT_S)


def settings_file() -> Path | None:
    path = ROOT / "settings.yaml"
    return path if path.is_file() else None


def simulator(log_dir: Path) -> contextlib.AbstractContextManager[Server]:
    """The project's own ``simulate-upstream`` command (uvicorn's default loop: uvloop when installed)."""
    scenario = log_dir / "scenario.json"
    scenario.write_text(json.dumps(SCENARIO))
    port = free_port()
    config = settings_file()
    cmd = [
        sys.executable,
        "-m",
        "adaptive_router",
        *(["--config", str(config)] if config else []),
        "simulate-upstream",
        "--scenario",
        str(scenario),
        "--host",
        HOST,
        "--port",
        str(port),
    ]
    return running("simulator", cmd, child_env({}), port, "/health", log_dir)


def router(variant: Variant, simulator_url: str, log_dir: Path) -> contextlib.AbstractContextManager[Server]:
    port = free_port()
    config = settings_file()
    env = child_env(
        {
            "ROUTER_SIMULATOR_URL": simulator_url + "/v1",
            "ROUTER_UPSTREAM__SIMULATE": "always",
            "ROUTER_CACHE__ENABLED": "false",
            **({"ROUTER_SETTINGS_FILE": str(config)} if config else {}),
        }
    )
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        "adaptive_router.service:app_from_environment",
        "--factory",
        "--host",
        HOST,
        "--port",
        str(port),
        *variant.uvicorn_args(),
    ]
    return running(f"router-{variant.name}", cmd, env, port, "/ready", log_dir)


def bare(variant: Variant, log_dir: Path) -> contextlib.AbstractContextManager[Server]:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        "http_overhead:bare_app",
        "--factory",
        "--app-dir",
        str(BENCH_DIR),
        "--host",
        HOST,
        "--port",
        str(port),
        *variant.uvicorn_args(),
    ]
    return running(f"bare-{variant.name}", cmd, child_env({}), port, "/ready", log_dir)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far, from /proc (0 where /proc is not there)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()  # after "(comm)", which may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent busy since boot (user, nice, system, irq, softirq, steal)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    """CPU time of this process's finished children: the load generator's runs."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# --- load generators ---------------------------------------------------------------------------


class Wrk:
    """wrk with a Lua script per body; its ``done`` hook prints the exact figures as one JSON line."""

    _DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,'
    .. '"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
"""

    def __init__(self, path: str, work_dir: Path) -> None:
        self.path = path
        self.work_dir = work_dir
        self._scripts: dict[str, Path] = {}

    @property
    def name(self) -> str:
        out = subprocess.run([self.path, "--version"], capture_output=True, text=True, timeout=10)
        return (out.stdout or out.stderr).splitlines()[0].split(" Copyright")[0].strip()

    def _script(self, body: str) -> Path:
        if body not in self._scripts:
            path = self.work_dir / f"wrk-{len(self._scripts)}.lua"
            path.write_text(
                'wrk.method = "POST"\nwrk.body = [==[' + body + "]==]\n"
                'wrk.headers["Content-Type"] = "application/json"\n' + self._DONE
            )
            self._scripts[body] = path
        return self._scripts[body]

    def _wrk(self, url: str, body: str, connections: int, seconds: int) -> str:
        cmd = [
            self.path,
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--timeout",
            "5s",
            "--latency",
            "-s",
            str(self._script(body)),
            url,
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + RUN_TIMEOUT_PAD_S)
        if out.returncode != 0:
            raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr.strip()}")
        return out.stdout

    def run(
        self,
        url: str,
        body: str,
        connections: int,
        seconds: float,
        warmup_s: float,
        on_start: Callable[[], None],
    ) -> dict[str, Any]:
        """A warm-up run, ``on_start()``, then the measured run (wrk takes whole seconds)."""
        if warmup_s > 0:
            self._wrk(url, body, connections, max(1, round(warmup_s)))
        on_start()
        stdout = self._wrk(url, body, connections, max(1, round(seconds)))
        line = next((x for x in stdout.splitlines() if x.startswith("BENCH_JSON ")), None)
        if line is None:
            raise RuntimeError(f"no figures in wrk's output:\n{stdout}")
        raw = json.loads(line.removeprefix("BENCH_JSON "))
        duration_s = raw["duration_us"] / 1e6
        return {
            "requests": raw["requests"],
            "duration_s": duration_s,
            "requests_per_s": raw["requests"] / duration_s,
            **{f"p{q}_ms": raw[f"p{q}_us"] / 1000 for q in (50, 90, 99)},
            "max_ms": raw["max_us"] / 1000,
            "errors": {k: raw[k] for k in ("connect", "read", "write", "status", "timeout")},
        }


class PythonLoad:
    """``benchmarks/_load.py`` (asyncio + httpx) in its own process: the fallback without wrk.

    It warms up, says ``warmed`` and waits for a line on stdin before the measured phase, so that
    ``on_start`` runs between the two without a second process start."""

    name = "asyncio+httpx (benchmarks/_load.py)"

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = work_dir

    def run(
        self,
        url: str,
        body: str,
        connections: int,
        seconds: float,
        warmup_s: float,
        on_start: Callable[[], None],
    ) -> dict[str, Any]:
        body_file = self.work_dir / "body.json"
        body_file.write_text(body)
        cmd = [sys.executable, str(BENCH_DIR / "_load.py"), "--url", url, "--body-file", str(body_file)]
        cmd += ["--connections", str(connections), "--duration", str(seconds), "--warmup", str(warmup_s)]
        cmd += ["--handshake"]
        with subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as proc:
            assert proc.stdin is not None and proc.stdout is not None
            try:
                # Bounded: _load.py ends its warm-up after warmup_s, and its measured phase after seconds.
                if proc.stdout.readline().strip() != "warmed":
                    raise RuntimeError(f"_load.py did not warm up (exit {proc.wait(STOP_TIMEOUT_S)})")
                on_start()
                proc.stdin.write("go\n")
                proc.stdin.close()
                out = proc.stdout.read()
                code = proc.wait(seconds + RUN_TIMEOUT_PAD_S)
            finally:
                if proc.poll() is None:
                    proc.kill()
        if code != 0:
            raise RuntimeError(f"_load.py failed ({code})")
        result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return result


Generator = Wrk | PythonLoad


def pick_generator(choice: str, work_dir: Path) -> Generator:
    path = shutil.which("wrk")
    if choice == "wrk" and path is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk (or --generator python)")
    if path is not None and choice != "python":
        return Wrk(path, work_dir)
    return PythonLoad(work_dir)


# --- measuring ---------------------------------------------------------------------------------


@dataclass
class Bench:
    generator: Generator
    warmup_s: float
    measure_s: float
    quick: bool
    log_dir: Path
    simulator: Server
    direct_model: str = ""


def chat_body(model: str, stream: bool = False) -> str:
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": MAX_TOKENS,
        "messages": [{"role": "user", "content": PROMPT}],
    }
    if stream:
        body["stream"] = True
    return json.dumps(body)


ROUTE_BODY = json.dumps({"messages": [{"role": "user", "content": PROMPT}], "max_tokens": MAX_TOKENS})


def measure(
    bench: Bench,
    variant: Variant,
    scenario: str,
    url: str,
    body: str,
    connections: int,
    processes: Mapping[str, int],
) -> dict[str, Any]:
    """One row: warm up, then measure; with the CPU each server process spent per request, and the
    cores that processes other than this benchmark's kept busy meanwhile (a busy machine's mark)."""
    ours = {**processes, "simulator": bench.simulator.pid}
    before: dict[str, float] = {}
    marks: list[float] = []

    def on_start() -> None:
        before.update({name: cpu_seconds(pid) for name, pid in ours.items()})
        marks.extend([machine_busy_seconds(), children_cpu_seconds(), time.monotonic()])

    figures = bench.generator.run(url, body, connections, bench.measure_s, bench.warmup_s, on_start)
    busy, children, started = marks
    wall = time.monotonic() - started
    cpu = {name: cpu_seconds(pid) - before[name] for name, pid in ours.items()}
    # wrk's measured run ended (and was reaped) after on_start; _load.py reports its own CPU.
    generator_cpu = figures.pop("generator_cpu_s", None)
    mine = sum(cpu.values()) + (children_cpu_seconds() - children if generator_cpu is None else generator_cpu)
    others = max(0.0, (machine_busy_seconds() - busy - mine) / wall)
    requests = max(1, figures["requests"])
    errors = sum(figures["errors"].values())
    row = {
        "variant": variant.name,
        "scenario": scenario,
        "connections": connections,
        **figures,
        "server_cpu_ms_per_request": {k: round(cpu[k] * 1000 / requests, 4) for k in processes},
        "other_processes_cores": round(others, 3),
        "goal": "",
        "met": None if not errors else False,
    }
    print(
        f"  {variant.name:<17} {scenario:<34} c={connections:<3} {figures['requests_per_s']:>9,.0f} req/s "
        f"p50 {figures['p50_ms']:.3f} ms  p99 {figures['p99_ms']:.3f} ms  (others: {others:.2f} cores)"
        + (f"  ERRORS {figures['errors']}" if errors else ""),
        file=sys.stderr,
        flush=True,
    )
    return row


def added_row(
    variant: Variant, scenario: str, direct: dict[str, Any], routed: dict[str, Any], goal: bool
) -> dict[str, Any]:
    """Router minus direct at one connection: the latency the router adds."""
    p50 = routed["p50_ms"] - direct["p50_ms"]
    p99 = routed["p99_ms"] - direct["p99_ms"]
    met = p50 <= ADDED_P50_GOAL_MS if goal else None
    clean = not (sum(direct["errors"].values()) or sum(routed["errors"].values()))
    return {
        "variant": variant.name,
        "scenario": scenario,
        "connections": 1,
        "derived": True,
        "requests_per_s": None,
        "p50_ms": p50,
        "p99_ms": p99,
        "goal": f"+p50<={ADDED_P50_GOAL_MS:g} ms" if goal else "",
        "met": (met and clean) if goal else None,
    }


def routed_model(server: Server) -> str:
    """The model the router picks for the benchmark's chat request: the direct calls ask for it."""
    request = urllib.request.Request(
        server.base_url + "/v1/chat/completions",
        data=chat_body("auto").encode(),
        headers={"content-type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        model: str = response.headers["x-router-model"]
        return model


def run_variant(bench: Bench, variant: Variant) -> list[dict[str, Any]]:
    with bare(variant, bench.log_dir) as server:
        baseline = measure(
            bench,
            variant,
            "/route: bare Starlette",
            server.base_url + "/route",
            ROUTE_BODY,
            MANY,
            {"server": server.pid},
        )
    with router(variant, bench.simulator.base_url, bench.log_dir) as server:
        rows = [baseline, *_router_rows(bench, variant, server, baseline)]
    return rows


def _router_rows(
    bench: Bench, variant: Variant, server: Server, baseline: dict[str, Any]
) -> list[dict[str, Any]]:
    sim = bench.simulator
    both = {"server": server.pid, "simulator": sim.pid}
    route = measure(bench, variant, "/route: router", server.base_url + "/route", ROUTE_BODY, MANY, both)
    ratio = route["requests_per_s"] / baseline["requests_per_s"]
    route.update(
        ratio_to_bare=ratio,
        goal=f">={ROUTE_RATIO_GOAL:.0%} of bare ({ratio:.0%})",
        met=ratio >= ROUTE_RATIO_GOAL and route["met"] is None,
    )
    rows = [route]
    model = routed_model(server)
    bench.direct_model = model
    chat_url, sim_url = server.base_url + "/v1/chat/completions", sim.base_url + "/v1/chat/completions"
    only_sim = {"simulator": sim.pid}
    for stream in (False, True):
        label = "chat stream" if stream else "chat"
        direct = measure(
            bench, variant, f"{label}: direct to simulator", sim_url, chat_body(model, stream), 1, only_sim
        )
        routed = measure(bench, variant, f"{label}: via router", chat_url, chat_body("auto", stream), 1, both)
        rows += [direct, routed, added_row(variant, f"{label}: added by router", direct, routed, not stream)]
    direct = measure(bench, variant, "chat: direct to simulator", sim_url, chat_body(model), MANY, only_sim)
    many = measure(bench, variant, "chat: via router", chat_url, chat_body("auto"), MANY, both)
    ratio = many["requests_per_s"] / direct["requests_per_s"]
    many.update(
        ratio_to_direct=ratio,
        goal=f">={CHAT_RATIO_GOAL:.0%} of direct ({ratio:.0%})",
        met=ratio >= CHAT_RATIO_GOAL and many["met"] is None,
    )
    rows += [direct, many, decision_row(variant, server)]
    if not bench.quick:
        rows.append(
            measure(bench, variant, "chat stream: via router", chat_url, chat_body("auto", True), MANY, both)
        )
    return rows


def decision_row(variant: Variant, server: Server) -> dict[str, Any]:
    """The router's own decision time over its latest requests (the 32-connection chat run)."""
    with urllib.request.urlopen(server.base_url + "/metrics.json", timeout=10) as response:
        window = json.loads(response.read())["window"]
    decision = window["decision_us"]
    return {
        "variant": variant.name,
        "scenario": "decision in the router under load (us)",
        "connections": MANY,
        "derived": True,
        "requests_per_s": None,
        "p50_ms": decision["p50"] / 1000,
        "p99_ms": decision["p99"] / 1000,
        "decision_p50_us": decision["p50"],
        "decision_p99_us": decision["p99"],
        "decisions": window["decision_count"],
        "goal": "",
        "met": None,
    }


# --- LiteLLM's proxy, when an interpreter that has it is named ------------------------------------


# Loopback only: LiteLLM fetches a model price map from the internet at import unless told not to.
LITELLM_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_LOG": "ERROR",
    "LITELLM_TELEMETRY": "False",
    "DISABLE_SCHEMA_UPDATE": "true",
    # No master key: every request is accepted. Acceptable here only: it listens on 127.0.0.1
    # for the length of the run.
    "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true",
}


LITELLM_MAIN = "import sys; from litellm import run_server; sys.exit(run_server())"  # its console script


def litellm_config(work: Path, sim_url: str, model: str) -> Path:
    """One deployment: the model the router picks, served by the same simulated upstream."""
    config = {
        "model_list": [
            {
                "model_name": model,
                "litellm_params": {
                    "model": f"openai/{model}",
                    "api_base": sim_url + "/v1",
                    "api_key": "none",
                },
            }
        ],
        "litellm_settings": {"telemetry": False, "drop_params": True},
    }
    path = work / "litellm.json"  # LiteLLM reads its config with yaml.safe_load: JSON is YAML
    path.write_text(json.dumps(config))
    return path


def peer_rows(bench: Bench, peer_python: str) -> list[dict[str, Any]]:
    """LiteLLM's proxy in front of the same upstream, at 1 and 32 connections; [] without LiteLLM."""
    env = child_env(LITELLM_ENV)
    probe = subprocess.run(
        [peer_python, "-c", "import litellm.proxy.proxy_server"], capture_output=True, env=env, timeout=120
    )
    if probe.returncode != 0:
        print(
            f"note: {peer_python} has no LiteLLM proxy (pip install 'litellm[proxy]'): skipped",
            file=sys.stderr,
        )
        return []
    sim, model = bench.simulator, bench.direct_model
    port = free_port()
    config = litellm_config(bench.log_dir, sim.base_url, model)
    cmd = [peer_python, "-c", LITELLM_MAIN, "--config", str(config), "--host", HOST, "--port", str(port)]
    cmd += ["--num_workers", "1"]
    peer = Variant("litellm", "proxy")
    try:
        with running("litellm", cmd, env, port, "/health/liveliness", bench.log_dir, PEER_START_S) as server:
            url = server.base_url + "/v1/chat/completions"
            both = {"server": server.pid, "simulator": sim.pid}
            body = chat_body(model)
            return [measure(bench, peer, "chat: via LiteLLM proxy", url, body, n, both) for n in (1, MANY)]
    except (RuntimeError, TimeoutError) as exc:  # the router's rows still get written
        print(f"note: LiteLLM's proxy could not be measured: {str(exc)[:2000]}", file=sys.stderr)
        return []


# --- report ------------------------------------------------------------------------------------


def variants(quick: bool) -> list[Variant]:
    fast = importlib.util.find_spec("uvloop") and importlib.util.find_spec("httptools")
    slow = Variant("asyncio", "h11")
    if not fast:
        return [slow]
    return [Variant("uvloop", "httptools")] if quick else [slow, Variant("uvloop", "httptools")]


def environment(generator: Generator) -> dict[str, Any]:
    info = machine_info(PACKAGES)
    return {
        **info,
        "load_generator": generator.name,
        "simulator_server": "adaptive-router simulate-upstream (uvicorn loop/http 'auto': uvloop+httptools "
        "when installed)",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per variant, the goal figures; and uvloop+httptools over asyncio+h11 where both ran."""
    out: dict[str, Any] = {}
    for row in rows:
        v = out.setdefault(row["variant"], {})
        if row["scenario"] == "/route: router":
            v["route_ratio_to_bare"] = row["ratio_to_bare"]
            v["route_requests_per_s"] = row["requests_per_s"]
        elif row["scenario"] == "/route: bare Starlette":
            v["bare_requests_per_s"] = row["requests_per_s"]
        elif row["scenario"] == "chat: added by router":
            v["chat_added_p50_ms"], v["chat_added_p99_ms"] = row["p50_ms"], row["p99_ms"]
        elif row["scenario"].startswith("decision in the router"):
            v["decision_p50_us"] = row["decision_p50_us"]
        elif row["scenario"] == "chat: direct to simulator" and row["connections"] == MANY:
            v["chat_direct_requests_per_s"] = row["requests_per_s"]
        elif row["scenario"] == "chat: via LiteLLM proxy":
            v[f"chat_litellm_c{row['connections']}_requests_per_s"] = row["requests_per_s"]
            v[f"chat_litellm_c{row['connections']}_p50_ms"] = row["p50_ms"]
        elif row["scenario"] == "chat stream: added by router":
            v["stream_added_p50_ms"], v["stream_added_p99_ms"] = row["p50_ms"], row["p99_ms"]
        elif row["scenario"] == "chat: via router" and row["connections"] == MANY:
            v["chat_router_requests_per_s"] = row["requests_per_s"]
            v["chat_ratio_to_direct"] = row["ratio_to_direct"]
    slow, fast = out.get("asyncio+h11"), out.get("uvloop+httptools")
    if slow and fast:
        out["uvloop+httptools_vs_asyncio+h11"] = {
            k: fast[k] / slow[k] for k in slow if k in fast and k.endswith("per_s") and slow[k]
        }
    return out


BUSY_CORES = 0.25  # other processes' load above which a row is marked as measured on a busy machine


def print_table(rows: list[dict[str, Any]], generator: str) -> None:
    header = (
        f"{'scenario':<52} {'conns':>5} {'requests/s':>11} {'p50 ms':>9} {'p99 ms':>9}  {'goal':<32} met?"
    )
    print(f"load generator: {generator}")
    if generator == PythonLoad.name:
        print("note: the asyncio+httpx generator saturates at a few hundred requests/s on this machine;")
        print("      rows at 32 connections measure it more than the servers: install wrk for those")
    print(header)
    print("-" * len(header))
    busy = False
    for r in rows:
        rps = "" if r["requests_per_s"] is None else f"{r['requests_per_s']:,.0f}"
        number = "{:>+9.3f}" if r.get("derived") else "{:>9.3f}"
        if "decision_p50_us" in r:  # microseconds, not an added time
            number = "{:>6.0f} us"
            r = {**r, "p50_ms": r["decision_p50_us"], "p99_ms": r["decision_p99_us"]}
        met = {True: "yes", False: "NO", None: ""}[r["met"]]
        mark = " *" if r.get("other_processes_cores", 0.0) > BUSY_CORES else ""
        busy = busy or bool(mark)
        print(
            f"{'[' + r['variant'] + '] ' + r['scenario']:<52} {r['connections']:>5} {rps:>11} "
            f"{number.format(r['p50_ms'])} {number.format(r['p99_ms'])}  {r['goal']:<32} {met}{mark}"
        )
    if busy:
        print(f"* other processes kept more than {BUSY_CORES:g} of a core busy during this row")


def wait_for_quiet(max_wait_s: float, quiet_s: int = 3) -> float:
    """Wait, at most ``max_wait_s``, until the machine has been idle (< BUSY_CORES busy) for ``quiet_s``
    one-second samples in a row; return the busy cores of the last sample."""
    deadline, quiet, busy = time.monotonic() + max_wait_s, 0, 0.0
    while True:
        before = machine_busy_seconds()
        time.sleep(1.0)
        busy = machine_busy_seconds() - before
        quiet = quiet + 1 if busy < BUSY_CORES else 0
        if quiet >= quiet_s or time.monotonic() >= deadline:
            return busy


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the fastest loop only, short runs (~25 s)")
    parser.add_argument("--generator", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument(
        "--wait-quiet", type=float, default=0.0, metavar="S", help="first wait up to S s for an idle machine"
    )
    parser.add_argument(
        "--peer-python",
        metavar="PATH",
        help="an interpreter with litellm[proxy]: measure LiteLLM's proxy too",
    )
    args = parser.parse_args(argv)
    busy_before = wait_for_quiet(args.wait_quiet) if args.wait_quiet > 0 else None
    load_before = load_average()
    if load_before[0] > 0.5 * (os.cpu_count() or 1):
        print(f"warning: the machine is busy (load {load_before}): figures will be low", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="http-overhead-") as tmp:
        work = Path(tmp)
        generator = pick_generator(args.generator, work)
        env = environment(generator)
        with simulator(work) as sim:
            bench = Bench(generator, 1.0, 2.0 if args.quick else 5.0, args.quick, work, sim)
            rows = [row for variant in variants(args.quick) for row in run_variant(bench, variant)]
            if args.peer_python:
                rows += peer_rows(bench, args.peer_python)
    env.update(
        load_average_before=load_before, load_average_after=load_average(), busy_cores_at_start=busy_before
    )
    result = {
        "benchmark": "http_overhead",
        "quick": args.quick,
        "environment": env,
        "method": {
            "warmup_s": bench.warmup_s,
            "measure_s": bench.measure_s,
            "many_connections": MANY,
            "max_tokens": MAX_TOKENS,
            "scenario": SCENARIO,
            "router_cache": "disabled",
            "route_body": json.loads(ROUTE_BODY),
        },
        "summary": summary(rows),
        "rows": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print_table(rows, generator.name)
    print(f"\nload average before {load_before}, after {env['load_average_after']}; wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
