"""The notebooks under notebooks/ run top to bottom against the real stack (a failing cell
fails the test), and are committed without outputs."""
from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import DATA_DIR, REPO_ROOT

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))
EXECUTED_DIR = REPO_ROOT / "var" / "notebooks"


def test_both_notebooks_exist():
    assert {p.name for p in NOTEBOOKS} >= {"triton_client.ipynb", "governance_walkthrough.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebook_has_no_outputs(path: Path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name} cell {index} has outputs"


def images_in(notebook: nbformat.NotebookNode) -> int:
    return sum("image/png" in output.get("data", {})
               for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_against_the_stack(stack, path: Path):
    notebook = nbformat.read(path, as_version=4)
    env = dict(stack.env, DATA_DIR=str(DATA_DIR), PYTHONPATH=str(REPO_ROOT),
               PATH=f"{REPO_ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    client = NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    try:
        client.execute(env=env)  # raises CellExecutionError, with the cell and its traceback, on a failing cell
    finally:
        EXECUTED_DIR.mkdir(parents=True, exist_ok=True)
        nbformat.write(notebook, EXECUTED_DIR / path.name)  # executed copy, for a person to open
    errors = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs if o.output_type == "error"]
    assert errors == []
    assert images_in(notebook) >= 1, "the notebook's figures were not drawn"
