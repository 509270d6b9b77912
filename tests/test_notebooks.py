"""Every notebook in notebooks/ runs headlessly on small inputs, so that none of them rots.

Executed with nbclient in a copy (the committed outputs stay as they are); the data folder and
the size come from ADAPTIVE_ROUTER_DATA and NOTEBOOK_LIMIT, read by each notebook's first cell.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
FULL_DATA = Path(os.environ.get("ADAPTIVE_ROUTER_DATA", REPO.parent / "shared" / "data")).resolve()
SAMPLE = REPO / "examples" / "data"  # the Apache-2.0 sample shipped for fresh clones
DATA = FULL_DATA if (FULL_DATA / "outcomes" / "outcomes.csv").is_file() else SAMPLE
LIMIT = "150"

nbformat = pytest.importorskip("nbformat", reason="notebook tests need nbformat (the 'notebooks' extra)")
nbclient = pytest.importorskip("nbclient", reason="notebook tests need nbclient (the 'notebooks' extra)")
pytest.importorskip("ipykernel", reason="notebook tests need ipykernel (the 'notebooks' extra)")
pytest.importorskip("matplotlib", reason="notebook tests need matplotlib (the 'notebooks' extra)")


def test_every_notebook_is_listed_and_small() -> None:
    assert {p.name for p in NOTEBOOKS} == {
        "replay_traffic_log.ipynb",
        "routerbench_replay.ipynb",
        "adaptation.ipynb",
    }
    for path in NOTEBOOKS:
        assert path.stat().st_size < 1_000_000, f"{path.name} is too large to commit"
        nb = nbformat.read(path, as_version=4)
        assert any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{path.name} has no outputs"
        first_code = next(c for c in nb.cells if c.cell_type == "code")
        assert "ADAPTIVE_ROUTER_DATA" in first_code.source and "NOTEBOOK_LIMIT" in first_code.source


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_on_small_inputs(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _execute(path, DATA, tmp_path, monkeypatch)


def test_outcome_notebook_runs_on_the_shipped_sample(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh clone has no shared data folder: the replay notebook runs on examples/data."""
    _execute(REPO / "notebooks" / "routerbench_replay.ipynb", SAMPLE, tmp_path, monkeypatch)


def _execute(path: Path, data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADAPTIVE_ROUTER_DATA", str(data))
    monkeypatch.setenv("NOTEBOOK_LIMIT", LIMIT)
    copy = tmp_path / path.name
    shutil.copy(path, copy)
    nb = nbformat.read(copy, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    client = nbclient.NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert errors == []
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert images, f"{path.name} drew no plot"
