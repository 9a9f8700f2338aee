"""Every notebook in ``tutorials/`` runs from top to bottom in its smoke setting.

Notebooks are found by globbing, so a tutorial added later is tested without editing this file.
Each runs in a fresh kernel of *this* interpreter (the venv's python, through a kernelspec written
to a temporary ``JUPYTER_PATH``), with ``PVAE_SMOKE=1``, ``PVAE_DATA_DIR`` and a temporary working
directory; a cell that raises fails the test with the cell's source and traceback.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest

TUTORIALS = Path(__file__).resolve().parents[1] / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))
KERNEL_NAME = "pvae-tests-python"
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")  # IPython colours its tracebacks


def test_tutorials_exist() -> None:
    assert NOTEBOOKS, f"no notebooks in {TUTORIALS}"


@pytest.fixture
def venv_kernel(tmp_path: Path, monkeypatch) -> str:
    """Installs a kernelspec running ``sys.executable -m ipykernel_launcher`` in a temporary
    ``JUPYTER_PATH`` entry, and returns its name."""
    spec_dir = tmp_path / "jupyter" / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "pvae tests",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    return KERNEL_NAME


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_tutorial_runs(path: Path, tmp_path: Path, venv_kernel: str, monkeypatch) -> None:
    import nbclient
    import nbformat
    from nbclient.exceptions import CellExecutionError

    data_dir = os.environ.get("PVAE_DATA_DIR")  # set by tests/conftest.py
    if not data_dir:
        pytest.fail("PVAE_DATA_DIR must point at the shared data folder (see tests/conftest.py)")
    # The kernel inherits this process's environment.
    monkeypatch.setenv("PVAE_SMOKE", "1")
    monkeypatch.setenv("PVAE_DATA_DIR", data_dir)
    workdir = tmp_path / "work"
    workdir.mkdir()

    notebook = nbformat.read(path, as_version=4)
    # A probe cell first: the kernel must be this interpreter, or the test would exercise
    # whatever python a kernelspec on the machine happens to name.
    probe = nbformat.v4.new_code_cell(
        f"import sys\nassert sys.executable == {sys.executable!r}, sys.executable"
    )
    notebook.cells.insert(0, probe)
    client = nbclient.NotebookClient(
        notebook,
        kernel_name=venv_kernel,
        timeout=600,
        resources={"metadata": {"path": str(workdir)}},
    )
    try:
        client.execute()
    except CellExecutionError as error:
        message = ANSI_ESCAPE.sub("", str(error))
        pytest.fail(f"{path.name} failed:\n{message}", pytrace=False)
