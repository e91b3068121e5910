"""The notebooks: built from notebooks/build_notebooks.py, committed without outputs, and run top to bottom
in FAST mode on the embedded model (a few minutes in all)."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def _builder():
    spec = importlib.util.spec_from_file_location("build_notebooks", NOTEBOOKS / "build_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_notebooks_match_their_generator():
    assert _builder().main(["--check"]) == 0


@pytest.mark.parametrize("name", sorted(_builder().NOTEBOOKS))
def test_committed_notebooks_have_no_outputs(name):
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(cell.outputs == [] and cell.execution_count is None for cell in code)
    assert 'os.environ.get("FASB_NOTEBOOK_FAST", "0") == "1"' in code[0].source


def _use_this_interpreter(monkeypatch, tmp_path: Path) -> None:
    """Make kernel "python3" start ``sys.executable``, installing a kernelspec for it when it would not."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        program = KernelSpecManager().get_kernel_spec("python3").argv[0]
    except NoSuchKernel:
        program = None
    # jupyter_client itself replaces a bare "python" / "python3" by sys.executable.
    bare = {"python", f"python{sys.version_info[0]}", "python{}.{}".format(*sys.version_info[:2])}
    if program in bare or (program and os.path.realpath(program) == os.path.realpath(sys.executable)):
        return
    from ipykernel.kernelspec import install

    install(prefix=str(tmp_path))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "share" / "jupyter"))
    argv = json.loads((tmp_path / "share/jupyter/kernels/python3/kernel.json").read_text())["argv"]
    assert os.path.realpath(argv[0]) == os.path.realpath(sys.executable)


def _outputs(notebook, output_type: str | None = None, mime: str | None = None) -> list:
    found = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output_type is not None and output.output_type != output_type:
                continue
            if mime is not None and mime not in output.get("data", {}):
                continue
            found.append(output)
    return found


def _text(notebook) -> str:
    parts = [o.get("text", "") for o in _outputs(notebook, "stream")]
    parts += [o["data"].get("text/plain", "") for o in _outputs(notebook) if "data" in o]
    return "\n".join(parts)


# What each notebook must show: at least this many figures, and these strings in its text output.
EXPECTED = {
    "01_head_importance.ipynb": (
        6,
        ["best head L", "largest coefficient difference", "TruthfulQA is read from"],
    ),
    "02_ablations.ipynb": (6, ["fasb/question", "fasb/paper", "accuracy"]),
    "03_quickstart.ipynb": (0, ["steerer.safetensors", "unsteered:", "FASB:"]),
}


@pytest.mark.integration
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_notebook_runs_in_fast_mode(name, monkeypatch, tmp_path):
    from nbclient import NotebookClient

    monkeypatch.setenv("FASB_NOTEBOOK_FAST", "1")
    # An inherited non-inline backend would keep the figures out of the outputs.
    monkeypatch.delenv("MPLBACKEND", raising=False)
    _use_this_interpreter(monkeypatch, tmp_path)
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    notebook.cells.append(nbformat.v4.new_code_cell("import sys\nprint('kernel:', sys.executable)"))
    client = NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    client.execute()

    assert _outputs(notebook, "error") == []
    figures, strings = EXPECTED[name]
    assert len(_outputs(notebook, mime="image/png")) >= figures
    text = _text(notebook)
    assert f"kernel: {sys.executable}" in text
    for expected in strings:
        assert expected in text
