"""The README's examples, executed as a reader would run them, against a fresh server.

A fenced block preceded by the line ``<!-- run -->`` is executed (unmarked blocks are not: they
need a real API key, Docker, a Redis elsewhere, or data a fresh clone does not have):

- ``python`` blocks run as a script in an empty directory outside the repository (a reader's
  own project); ``127.0.0.1:8000`` points at a router this module starts for them.
- ``bash`` blocks run line by line from the repository root, ``adaptive-router`` being this
  checkout's CLI. A line that starts a server (``serve``, ``simulate-upstream``) passes when the
  server answers on its port; it is then stopped. Ports in the text are replaced by free ones.

``python3 tests/test_readme.py`` lists every block with whether it is marked, and with
``--all`` runs the unmarked ones too and says which fail.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
MARK = "<!-- run -->"
LINE_TIMEOUT_S = 180
SERVER_START_S = 90
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.DOTALL | re.MULTILINE)


@dataclass(frozen=True)
class Block:
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    marked: bool

    @property
    def label(self) -> str:
        return f"README.md:{self.line} ({self.lang})"


def blocks(text: str) -> list[Block]:
    found = []
    for match in FENCE.finditer(text):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
        line = text.count("\n", 0, match.start()) + 1
        found.append(Block(line, match.group(1), match.group(2), before == MARK))
    return found


def marked_blocks() -> list[Block]:
    return [b for b in blocks(README.read_text(encoding="utf-8")) if b.marked]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def clean_env(**extra: str) -> dict[str, str]:
    """No settings, keys or data paths from the shell: a fresh machine, this checkout first on the path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTER_") and k != "OPENROUTER_API_KEY"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env["COLUMNS"] = "100"
    env.update(extra)
    return env


def wait_http(url: str, process: subprocess.Popen[bytes], limit_s: float) -> bool:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(url, timeout=2.0).status_code < 500:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    return False


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture(scope="module")
def router_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``adaptive-router serve`` as the README starts it (simulated upstream: no key)."""
    work = tmp_path_factory.mktemp("readme-router")
    port = free_port()
    log = (work / "router.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "adaptive_router", "serve", "--port", str(port)],
        cwd=work,
        env=clean_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        if not wait_http(url + "/ready", process, SERVER_START_S):
            pytest.fail("the README's router did not start:\n" + (work / "router.log").read_text()[-3000:])
        yield url
    finally:
        stop(process)
        log.close()


# --- running one block --------------------------------------------------------------------------


def run_python(block: Block, router: str) -> subprocess.CompletedProcess[str]:
    code = block.code.replace("http://127.0.0.1:8000", router)
    with tempfile.TemporaryDirectory(prefix="readme-") as outside:  # not the repository
        return subprocess.run(
            [sys.executable, "-c", code],
            cwd=outside,
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=LINE_TIMEOUT_S,
            check=False,
        )


def bash_lines(code: str) -> list[str]:
    lines = [line.strip() for line in code.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def _command(line: str) -> tuple[str, int | None]:
    """The line with this checkout's CLI and free ports; the port when it starts a server."""
    port = None
    if re.search(r"adaptive-router\s+(serve|simulate-upstream)\b", line):
        port = free_port()
        found = re.search(r"--port\s+\d+", line)
        line = re.sub(r"--port\s+\d+", f"--port {port}", line) if found else f"{line} --port {port}"
    line = re.sub(
        r"(^|\s)adaptive-router(\s)", rf"\1{shlex.quote(sys.executable)} -m adaptive_router\2", line
    )
    return line, port


def run_bash_line(line: str) -> tuple[bool, str]:
    command, port = _command(line)
    if port is None:
        done = subprocess.run(
            ["bash", "-c", command],
            cwd=REPO,
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=LINE_TIMEOUT_S,
            check=False,
        )
        return done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            ["bash", "-c", f"exec {command}"], cwd=REPO, env=clean_env(), stdout=log, stderr=log
        )
        try:
            path = "/health" if " serve" in line else "/v1/models"
            ok = wait_http(f"http://127.0.0.1:{port}{path}", process, SERVER_START_S)
        finally:
            stop(process)
        log.seek(0)
        return ok, log.read().decode(errors="replace")[-3000:]


# Never run, even with --all: installs, the test suite itself, Docker, shells' background jobs.
NOT_RUN = re.compile(r"pip install|apt-get|pytest|docker|^export |&\s*(#.*)?$")


def run_block(block: Block, router: str) -> list[str]:
    """Failures, one message each (empty: the block ran)."""
    if block.lang == "python":
        done = run_python(block, router)
        return (
            [] if done.returncode == 0 else [f"{block.label}: exit {done.returncode}\n{done.stderr[-3000:]}"]
        )
    if block.lang == "bash":
        failures = []
        for line in bash_lines(block.code):
            if NOT_RUN.search(line):
                failures.append(
                    f"{block.label}: not run (installs, runs the suite, or needs a shell job): {line}"
                )
                continue
            ok, output = run_bash_line(line)
            if not ok:
                failures.append(f"{block.label}: {line}\n{output}")
        return failures
    return [f"{block.label}: cannot run a {block.lang or 'plain'} block; mark only python or bash"]


# --- the tests ------------------------------------------------------------------------------------


def test_readme_marks_examples_to_run() -> None:
    assert len(marked_blocks()) >= 4, "the client, library, CLI and replay examples are marked"


def test_harness_finds_fences_and_marks() -> None:
    text = f"a\n{MARK}\n```python\nprint(1)\n```\n\n```bash\nls\n```\n"
    assert blocks(text) == [Block(3, "python", "print(1)\n", True), Block(7, "bash", "ls\n", False)]
    command, port = _command("adaptive-router serve --port 8000 --workers 2")
    assert port is not None and f"--port {port}" in command and "-m adaptive_router serve" in command


@pytest.mark.parametrize("block", marked_blocks(), ids=lambda b: f"line{b.line}-{b.lang}")
def test_readme_example_runs(block: Block, router_url: str) -> None:
    failures = run_block(block, router_url)
    assert not failures, "\n\n".join(failures)


if __name__ == "__main__":  # python3 tests/test_readme.py [--all]
    run_all = "--all" in sys.argv
    every = blocks(README.read_text(encoding="utf-8"))
    for b in every:
        print(f"{b.label}: {'marked' if b.marked else 'not marked'}")
    if run_all:
        port = free_port()
        with tempfile.TemporaryDirectory() as work:
            server = subprocess.Popen(
                [sys.executable, "-m", "adaptive_router", "serve", "--port", str(port)],
                cwd=work,
                env=clean_env(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                wait_http(f"http://127.0.0.1:{port}/ready", server, SERVER_START_S)
                for b in every:
                    if b.lang in ("python", "bash"):
                        problems = run_block(b, f"http://127.0.0.1:{port}")
                        print(f"== {b.label}: {'ok' if not problems else 'FAILED'}")
                        for problem in problems:
                            print(problem[:1500])
            finally:
                stop(server)
