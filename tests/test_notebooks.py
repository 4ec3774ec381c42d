"""Every notebook under colabs/ runs top to bottom in a headless kernel, in the fast setting.

LFVIT_NOTEBOOK_FAST=1 makes the notebooks train the 8-step `runlocal` demo; the quickstart and
trade-off notebooks share one demo workdir, as users' runs do. The full setting is timed by hand
(README, "Notebooks").
"""
import glob
import os
import shutil

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLABS = os.path.join(ROOT, "colabs")
NOTEBOOKS = sorted(glob.glob(os.path.join(COLABS, "*.ipynb")))


def test_every_notebook_is_listed():
    names = {os.path.basename(p) for p in NOTEBOOKS}
    assert {"quickstart.ipynb", "tradeoff_explorer.ipynb", "training_walkthrough.ipynb"} <= names


def test_committed_notebooks_are_what_the_generator_writes(tmp_path):
    import importlib.util
    spec = importlib.util.spec_from_file_location("make_notebooks",
                                                  os.path.join(COLABS, "make_notebooks.py"))
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    generator.main(str(tmp_path))
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == sorted(os.path.basename(p) for p in NOTEBOOKS)
    for name in written:
        with open(os.path.join(COLABS, name)) as committed:
            assert (tmp_path / name).read_text() == committed.read(), \
                f"colabs/{name} is stale: run python colabs/make_notebooks.py"


@pytest.fixture(scope="module")
def demo_workdir(runlocal_runs, tmp_path_factory):
    """The shared demo workdir of the fast setting: a copy of the session's runlocal run."""
    root = tmp_path_factory.mktemp("notebooks")
    shutil.copytree(runlocal_runs["lfvit"], root / "demo_fast")  # demo.workdir(fast=True)
    return str(root / "demo")


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs(path, demo_workdir, monkeypatch):
    monkeypatch.setenv("LFVIT_NOTEBOOK_FAST", "1")
    monkeypatch.setenv("LFVIT_DEMO_WORKDIR", demo_workdir)
    # The kernel is a fresh process: one CPU device, not the 8 fake ones of conftest.py.
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    nb = nbformat.read(path, as_version=4)
    assert all(not cell.get("outputs") for cell in nb.cells if cell.cell_type == "code"), \
        "commit notebooks with outputs cleared (python colabs/make_notebooks.py)"
    # Raises CellExecutionError, with the failing cell and traceback, on any error.
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": COLABS}}).execute()
