"""The CLI as a user meets it: a real process, an 80-column terminal, a pseudo-terminal for the
spinner, a ``.env`` file, and the spellings of the published designs (../shared/SEEDS.md)."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adaptive_router import load_settings
from adaptive_router._cli import main

REPO = Path(__file__).resolve().parents[1]
FRUGAL = "routing:\n  modes:\n    frugal: {latency: 0, cost: 1, quality: 0}\n"
# Seed 000's config.yaml, as its write-up shows it.
SEED_CONFIG = """\
server:
  host: 127.0.0.1
  port: 8000
redis:
  host: localhost
  port: 6380
  ttl_seconds: 1800
routing:
  default_weights: {latency: 0.4, cost: 0.3, quality: 0.3}
  fallback_models: [openai/gpt-4o-mini]
"""


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("ROUTER_") or name == "OPENROUTER_API_KEY":
            monkeypatch.delenv(name)


def cli(*argv: str, columns: int = 80, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "COLUMNS": str(columns),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    return subprocess.run(
        [sys.executable, "-m", "adaptive_router", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


def json_out(capsys: pytest.CaptureFixture[str], *argv: str) -> object:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


# --- tables at 80 columns ----------------------------------------------------------------------


@pytest.mark.parametrize("columns", [80, 100])
def test_models_table_fits_the_terminal(columns: int) -> None:
    result = cli("models", "--limit", "5", columns=columns)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= columns, "\n" + result.stdout
    ids = [row["model"] for row in json.loads(cli("models", "--json", "--limit", "5").stdout)]
    table_rows = [line for line in lines if line.startswith("│")]
    assert len(table_rows) == 5, "one line per model: no cell wraps\n" + result.stdout
    for model_id, line in zip(ids, table_rows, strict=True):
        assert model_id in line  # the id in full, on its own row
    assert "score" in result.stdout
    assert "not shown" in result.stdout  # the columns left out are named


def test_models_title_names_the_catalogue_not_its_repr() -> None:
    result = cli("models", "--limit", "1", "--mode", "speed")
    assert "<Catalogue" not in result.stdout
    assert "64 models (bundled) ranked for mode speed" in result.stdout


def test_route_dry_run_ranking_fits_80_columns() -> None:
    result = cli("route", "Write a regex for emails", "--dry-run", "--priority", "cost")
    assert result.returncode == 0, result.stderr
    table = [line for line in result.stdout.splitlines() if line[:1] in "┏┃┡│└"]
    assert table and max(len(line) for line in table) <= 80, result.stdout


def test_live_route_shows_a_spinner_in_a_terminal() -> None:
    """stderr on a pseudo-terminal, as in a shell: something moves while the call runs."""
    master, slave = pty.openpty()
    env = {
        **os.environ,
        "COLUMNS": "80",
        "TERM": "xterm",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "adaptive_router", "route", "Say hello", "--max-tokens", "40"],
        stdout=subprocess.PIPE,
        stderr=slave,
        env=env,
    )
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and process.poll() is None:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    seen += os.read(master, 65536)
                except OSError:
                    break
        out, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
        os.close(master)
    assert process.returncode == 0, seen.decode(errors="replace")
    assert b"routing and waiting for the answer" in seen
    assert out.strip(), "the answer goes to stdout"
    assert b"routing and waiting" not in out


# --- where settings come from --------------------------------------------------------------------


def test_config_is_accepted_after_the_subcommand(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "custom.yaml").write_text(FRUGAL, encoding="utf-8")
    after = json_out(
        capsys, "models", "--json", "--mode", "frugal", "--limit", "1", "--config", "custom.yaml"
    )
    before = json_out(
        capsys, "--config", "custom.yaml", "models", "--json", "--mode", "frugal", "--limit", "1"
    )
    assert after == before


def test_settings_file_named_in_dotenv_is_read(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "custom.yaml").write_text(FRUGAL, encoding="utf-8")
    (tmp_path / ".env").write_text("ROUTER_SETTINGS_FILE=custom.yaml\n", encoding="utf-8")
    rows = json_out(capsys, "models", "--json", "--mode", "frugal", "--limit", "1")
    assert isinstance(rows, list) and rows[0]["mode"] == "frugal"


def test_environment_settings_file_wins_over_dotenv(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".env").write_text("ROUTER_SETTINGS_FILE=absent.yaml\n", encoding="utf-8")
    (tmp_path / "custom.yaml").write_text(FRUGAL, encoding="utf-8")
    monkeypatch.setenv("ROUTER_SETTINGS_FILE", "custom.yaml")
    rows = json_out(capsys, "models", "--json", "--mode", "frugal", "--limit", "1")
    assert isinstance(rows, list) and rows[0]["mode"] == "frugal"


# --- the published designs' spellings ------------------------------------------------------------


def test_explore_mode_is_models_mode(capsys: pytest.CaptureFixture[str]) -> None:
    explored = json_out(capsys, "explore", "--mode", "speed", "--json", "--limit", "5")
    listed = json_out(capsys, "models", "--mode", "speed", "--json", "--limit", "5")
    assert [r["model"] for r in explored] == [r["model"] for r in listed]  # type: ignore[union-attr]


def test_benchmark_requests_is_iterations(capsys: pytest.CaptureFixture[str]) -> None:
    result = json_out(capsys, "benchmark", "--requests", "50", "--models", "10", "--json")
    assert isinstance(result, dict) and result["iterations"] == 50


def test_seed_config_yaml_redis_keys_are_aliases(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(SEED_CONFIG, encoding="utf-8")
    settings = load_settings(path)
    assert settings.redis.url == "redis://localhost:6380/0"
    assert settings.cache.ttl_seconds == 1800
    assert settings.routing.fallback_models == ["openai/gpt-4o-mini"]


def test_seed_config_yaml_works_from_the_cli(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(SEED_CONFIG, encoding="utf-8")
    rows = json_out(capsys, "models", "--config", "config.yaml", "--json", "--limit", "1")
    assert isinstance(rows, list) and len(rows) == 1


def test_redis_url_wins_over_host_and_port(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("redis: {url: 'redis://10.0.0.5:6379/2', host: ignored, port: 1}\n", encoding="utf-8")
    assert load_settings(path).redis.url == "redis://10.0.0.5:6379/2"


def test_bad_redis_port_names_the_key(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("redis: {host: localhost, port: sixty}\n", encoding="utf-8")
    code = main(["models", "--config", "config.yaml"])
    _, err = capsys.readouterr()
    assert code == 2
    assert "redis.port" in err and "Traceback" not in err
