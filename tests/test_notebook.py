"""The tutorial notebook executes end to end in the project's .venv (the design's "imported in a notebook")."""
import json
import sys
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parent.parent / "examples" / "federated_learning_smpc.ipynb"
KERNEL = "fl-smpc-test"
SMALL = "ROUNDS = 2\nLOCAL_STEPS = 2\nSMS_ROUNDS = 1\n"  # the test's settings, injected after the parameters cell


def test_notebook_is_stored_without_outputs():
    nb = json.loads(NOTEBOOK.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code and all(c["outputs"] == [] and c["execution_count"] is None for c in code)
    assert sum("parameters" in c["metadata"].get("tags", []) for c in code) == 1


@pytest.fixture
def jupyter_in_tmp(tmp_path, monkeypatch):
    """Jupyter, IPython and matplotlib state in tmp_path, and a kernelspec running this very interpreter.

    The spec is ours (not the user's "python3", which may point at another Python), so the kernel
    is the .venv's python with the worktree's fl_smpc installed.
    """
    for var, sub in [("JUPYTER_PATH", "jupyter"), ("JUPYTER_DATA_DIR", "jupyter-data"),
                     ("JUPYTER_CONFIG_DIR", "jupyter-config"), ("JUPYTER_RUNTIME_DIR", "jupyter-runtime"),
                     ("IPYTHONDIR", "ipython"), ("MPLCONFIGDIR", "mplconfig")]:
        (tmp_path / sub).mkdir()
        monkeypatch.setenv(var, str(tmp_path / sub))
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "fl-smpc test (.venv)", "language": "python"}))
    work = tmp_path / "cwd"
    work.mkdir()
    return work


def test_notebook_executes(jupyter_in_tmp):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(str(NOTEBOOK), as_version=4)
    index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    nb.cells.insert(index + 1, nbformat.v4.new_code_cell(SMALL, metadata={"tags": ["injected-parameters"]}))

    client = NotebookClient(nb, kernel_name=KERNEL, timeout=300, resources={"metadata": {"path": str(jupyter_in_tmp)}})
    client.execute()  # raises CellExecutionError, naming the cell, if any cell raises; shuts the kernel down

    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "round 2/2  global loss" in text and "round 3/" not in text  # the injected settings were used
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) == 2, "the toy and the SMS training pictures were not both displayed"
    assert "round  1: test accuracy" in text and "round  2:" not in text  # the SMS section ran, 1 round
    rows = (jupyter_in_tmp / "training-history.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 3  # header + rounds x owners
