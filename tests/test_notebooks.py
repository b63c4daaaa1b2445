"""The chapter notebooks: each runs top to bottom under every backend under test, and is committed clean.

A notebook runs in a fresh Jupyter kernel on the Python that runs pytest (a kernel spec written to a temporary
directory, so no user-level ``python3`` kernel can stand in for it), with ``RESNET_BACKEND`` set to the
backend under test and small parameters injected after its ``parameters`` cell, as papermill does. Running
needs the notebook tools of the ``test`` extra (nbclient, nbformat, ipykernel); where they are missing the
run is skipped, unless the matrix requires backends (``RESNET_TEST_BACKENDS``), where it is an error.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
D2L_SECTION = "https://d2l.ai/chapter_convolutional-modern/resnet.html"
TOOLS = ("nbclient", "nbformat", "ipykernel")

#: Injected after each notebook's parameters cell, for the names that cell defines: seconds on a CPU.
SMALL = {
    "DATASET": "digits",
    "SUBSET": 128,
    "RESIZE": 16,
    "EPOCHS": 1,
    "BATCH_SIZE": 64,
    "INPUT_SIZE": 32,
    "BATCH": 2,
    "PROGRESS": False,
    "OUT_DIR": None,
    "BOOK_SCALE": False,
}
#: Seconds a single cell may take before the run fails (the slowest, JAX compiling a train step, takes ~20).
CELL_TIMEOUT = 300
#: Pictures each notebook must show: a cell that stops drawing is a failure, not a silent blank.
MIN_IMAGES = {"resnet_chapter": 7, "same_weights": 1, "resnet_exercises": 1, "published_weights": 1}


def _load(path: Path) -> dict:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _parameters_cell(notebook: dict) -> tuple[int, dict]:
    cells = [(i, c) for i, c in enumerate(notebook["cells"]) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"expected exactly one cell tagged 'parameters', found {len(cells)}"
    return cells[0]


def _source(cell: dict) -> str:
    source = cell["source"]
    return source if isinstance(source, str) else "".join(source)


def _assigned_names(source: str) -> set[str]:
    return {
        target.id
        for node in ast.parse(source).body
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name)
    }


def test_notebooks_exist() -> None:
    names = {path.stem for path in NOTEBOOKS}
    expected = {"published_weights", "resnet_chapter", "resnet_exercises", "same_weights"}
    assert expected <= names, f"notebooks found in {NOTEBOOKS_DIR}: {sorted(names)}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_is_committed_clean(path: Path) -> None:
    """No outputs or execution counts in the repository: they belong to whoever runs the notebook."""
    notebook = _load(path)
    dirty = [
        i
        for i, cell in enumerate(notebook["cells"])
        if cell["cell_type"] == "code" and (cell.get("outputs") or cell.get("execution_count") is not None)
    ]
    assert not dirty, (
        f"{path.name}: code cells {dirty} have outputs or execution counts; clear them before committing "
        "(Jupyter: Edit > Clear Outputs of All Cells, or jupyter nbconvert --clear-output --inplace)"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_structure(path: Path) -> None:
    """A title linking the chapter, a parameters cell of plain assignments, and the backend shown."""
    notebook = _load(path)
    if importlib.util.find_spec("nbformat") is not None:
        import nbformat

        nbformat.validate(nbformat.reads(json.dumps(notebook), as_version=4))
    first = notebook["cells"][0]
    assert first["cell_type"] == "markdown" and _source(first).startswith("# "), "the first cell must be a title"
    assert D2L_SECTION in _source(first), f"the first cell must link {D2L_SECTION}"
    _, parameters = _parameters_cell(notebook)
    names = _assigned_names(_source(parameters))
    assert names and "BACKEND" in names, "the parameters cell must assign the parameters, BACKEND included"
    code = "\n".join(_source(c) for c in notebook["cells"] if c["cell_type"] == "code")
    assert "resnet.backend()" in code, "a notebook must show the active backend"


def _require_tools() -> None:
    missing = [name for name in TOOLS if importlib.util.find_spec(name) is None]
    if not missing:
        return
    message = f"running the notebooks needs {', '.join(missing)}: pip install -e '.[<backend>,test]'"
    if os.environ.get("RESNET_TEST_BACKENDS"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def kernel_name(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A kernel spec that starts ``sys.executable -m ipykernel_launcher``, found first on JUPYTER_PATH."""
    _require_tools()
    from ipykernel.kernelspec import install

    prefix = tmp_path_factory.mktemp("jupyter")
    name = "resnet-tests"
    install(kernel_name=name, display_name=f"resnet tests ({sys.executable})", prefix=str(prefix))
    data_dir = prefix / "share" / "jupyter"
    previous = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = os.pathsep.join([str(data_dir), *([previous] if previous else [])])
    yield name
    if previous is None:
        os.environ.pop("JUPYTER_PATH", None)
    else:
        os.environ["JUPYTER_PATH"] = previous


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_runs(path: Path, backend_name: str, kernel_name: str, tmp_path: Path) -> None:
    """The notebook runs top to bottom without an error in a kernel whose backend is the one under test."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    notebook = nbformat.read(path, as_version=4)
    index, parameters = _parameters_cell(notebook)
    overrides = {k: v for k, v in SMALL.items() if k in _assigned_names(parameters.source)}
    injected = nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in overrides.items()))
    injected.metadata["tags"] = ["injected-parameters"]
    notebook.cells.insert(index + 1, injected)

    env = {
        **os.environ,
        "RESNET_BACKEND": backend_name,
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
        "TMPDIR": str(tmp_path),  # the notebooks' scratch files (tens of MB of weights) go where pytest cleans up
    }
    client = NotebookClient(
        notebook,
        kernel_name=kernel_name,
        timeout=CELL_TIMEOUT,
        resources={"metadata": {"path": str(tmp_path)}},  # the kernel's working directory
    )
    started = time.perf_counter()
    try:
        client.execute(env=env)
    except CellExecutionError as error:
        pytest.fail(f"{path.name} under {backend_name}: {error}", pytrace=False)
    finally:
        nbformat.write(notebook, tmp_path / path.name)  # the executed copy, for a look after a failure
    seconds = time.perf_counter() - started

    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    printed = "".join(o.get("text", "") for o in outputs if o.output_type == "stream" and o.name == "stdout")
    assert f"backend: {backend_name}" in printed, f"the kernel did not use {backend_name}: {printed[:500]}"
    images = sum("image/png" in o.get("data", {}) for o in outputs)
    assert images >= MIN_IMAGES.get(path.stem, 1), f"{path.name} showed {images} images"
    print(f"{path.name} under {backend_name}: {seconds:.1f} s, {images} images")
