"""The package type-checks under ``mypy --strict`` (STYLE.md: "mypy strict on the package")."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_package_passes_mypy_strict() -> None:
    pytest.importorskip("mypy")
    pytest.importorskip("yaml-stubs", reason="types-PyYAML is needed for a clean run")
    run = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "adaptive_router"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
