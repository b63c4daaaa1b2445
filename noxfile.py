"""The test matrix: one environment per backend, because MXNet 1.9.1 needs numpy<1.24 while current
TensorFlow and JAX need a newer numpy.

    nox            # all four backends, the cross-backend session, the book's own code (d2l)
    nox -k jax     # one backend
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import nox


def _registry():
    """resnet/registry.py, read without importing the package (nox runs outside the project's environments)."""
    spec = importlib.util.spec_from_file_location("resnet_registry", Path(__file__).parent / "resnet" / "registry.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


#: The registered backends (resnet.registry): one test session each.
BACKENDS = _registry().BACKENDS
QUIET_TF = {"TF_CPP_MIN_LOG_LEVEL": "2"}
#: pytest-xdist: one worker per core (at most 4: each imports a framework), a test file's tests on one worker so
#: that its module-scoped fixtures (the reference's training steps, the data) are computed once.
PARALLEL = ["-n", str(max(1, min(4, os.cpu_count() or 1))), "--dist", "loadfile"]
#: Each worker's frameworks on one thread: with a worker per core, a framework's own pool of a thread per core
#: (OpenMP's in PyTorch and MXNet, whose idle threads spin, TensorFlow's, XLA's Eigen pool) contends with the
#: other worker. Measured on this 2-core machine, two workers with and without: TensorFlow 5.9 minutes against
#: 6.6, MXNet 3.6 against 4, JAX 8.6 (with the compilation cache below) against 11.3 (partly beside other
#: work); PyTorch 3.4 on two workers with one thread each, where it had taken 9 in one process and 11 on two
#: workers with its own threads. The processes the tests start inherit it.
ONE_THREAD = {
    "OMP_NUM_THREADS": "1",
    "TF_NUM_INTRAOP_THREADS": "1",
    "TF_NUM_INTEROP_THREADS": "1",
    "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
}
#: Keras Hub without its text-model dependencies: tensorflow-text would install the whole tensorflow (beside
#: tensorflow-cpu, 1 GB more), and its ResNet needs none of them (tokenizers comes with transformers).
KERAS_HUB = ["keras-hub==0.32.0", "absl-py", "regex", "rich", "packaging"]


def _jax_compilation_cache(session: nox.Session) -> dict[str, str]:
    """JAX's persistent compilation cache in nox's shared cache folder: the same steps of the same models
    compile in many tests and again in every ``resnet train`` process a test starts; with the cache, every
    compilation after the first reads XLA's executable back (keyed by the program, jaxlib and its options, so a
    changed model compiles anew). Every compilation is cached, however short."""
    return {
        "JAX_COMPILATION_CACHE_DIR": str(session.cache_dir / "jax-compilation"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }


nox.options.sessions = ["lint", "tests", "cross", "d2l"]
nox.options.error_on_missing_interpreters = True
# uv makes the environments and installs into them when it is installed (seconds instead of minutes, one shared
# cache); otherwise virtualenv and pip do.
nox.options.default_venv_backend = "uv|virtualenv"
#: The tests' processes write the .pyc files of what they import. uv installs without compiling bytecode (pip
#: compiles by default), and where PYTHONDONTWRITEBYTECODE is set, as on this project's machines, no process
#: would ever write them: every pytest worker and every `resnet train` process a test starts would compile the
#: frameworks' sources again (measured on a 2-core machine: `import torch` 4.9 s without them, 2.1 s with
#: them). Compiling everything at install instead (UV_COMPILE_BYTECODE) wrote 1.5 GB of .pyc files, most of
#: them for modules no test imports; written on first import, only the imported ones are (0.56 GB in a clean
#: run of the whole matrix). An empty value is
#: Python's "not set".
WRITE_BYTECODE = {"PYTHONDONTWRITEBYTECODE": ""}


def _pip_setting(name: str) -> str:
    """pip's own setting ``name`` (its PIP_ variable, else its configuration files), or ''."""
    value = os.environ.get(f"PIP_{name.upper().replace('-', '_')}")
    if value is None:
        found = subprocess.run(
            [sys.executable, "-m", "pip", "config", "get", f"global.{name}"],
            capture_output=True,
            text=True,
            check=False,
        )
        value = found.stdout.strip() if found.returncode == 0 else ""
    return value


# uv reads none of pip's settings. Where pip is told to look in a folder of wheels (this project's machines keep
# the CPU build of torch 2.13.0 there, which PyPI's torch==2.13.0, a CUDA build of several GB, is not) or is
# given constraints, uv is told the same, so that both install the same files.
for _pip, _uv, _separator in (("find-links", "UV_FIND_LINKS", ","), ("constraint", "UV_CONSTRAINT", " ")):
    if _uv not in os.environ and _pip_setting(_pip):
        os.environ[_uv] = _separator.join(_pip_setting(_pip).split())


@nox.session
def lint(session: nox.Session) -> None:
    """ruff's linter and formatter over the tree, with pyproject.toml's settings; ``nox -s lint -- --fix``
    is not needed: ``ruff check --fix . && ruff format .`` in any environment that has ruff."""
    session.install("ruff>=0.17,<0.18")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
@nox.parametrize("backend", BACKENDS, ids=list(BACKENDS))
def tests(session: nox.Session, backend: str) -> None:
    """The shared tests against one backend. The package is installed (not editable), so the installed
    layout is what is tested; the backend is required, so a broken install fails instead of skipping."""
    session.install(f".[{backend},test]")
    session.run(
        "pytest",
        *(session.posargs or ["-q", "-m", "not hub", *PARALLEL]),
        env={
            "RESNET_TEST_BACKENDS": backend,
            **QUIET_TF,
            **ONE_THREAD,
            **WRITE_BYTECODE,
            **_jax_compilation_cache(session),
        },
    )


@nox.session
def cross(session: nox.Session) -> None:
    """Torch, TensorFlow and JAX in one environment (they share a numpy): weights saved by each load into
    the others with the same outputs, selection works with several installed, and converted transformers and
    Keras Hub checkpoints give those libraries' own outputs in all three (RESNET_TEST_HUB makes a missing one
    an error). MXNet is installed without its numpy pin, so the real error for a too-new numpy is tested. Only
    the tests that need several backends at once run here: each backend's own session runs the rest."""
    session.install(".[torch,tensorflow,jax,test,hub]")
    session.install("--no-deps", *KERAS_HUB)
    session.install("--no-deps", "mxnet==1.9.1")
    env = {"RESNET_TEST_BACKENDS": "torch,tensorflow,jax", "RESNET_TEST_HUB": "1", **QUIET_TF}
    env.update(ONE_THREAD, **WRITE_BYTECODE, **_jax_compilation_cache(session))
    if session.posargs:
        session.run("pytest", *session.posargs, env=env)
        return
    session.run(
        "pytest",
        "-q",
        "tests/test_weights.py::test_save_in_one_backend_load_in_another",  # every pair of backends
        "tests/test_selection.py",  # several backends installed at once
        "tests/test_notebooks.py::test_notebook_runs[backend=torch-same_weights]",  # every pair compared
        "tests/test_notebooks.py::test_notebook_runs[backend=torch-published_weights]",
        *PARALLEL,
        env=env,
    )
    # the comparisons with transformers and Keras Hub (the rest of these files runs in every backend's session)
    session.run("pytest", "-q", "-m", "hub", "tests/test_convert.py", "tests/test_convert_keras_hub.py", env=env)


@nox.session(python="3.11")
def d2l(session: nox.Session) -> None:
    """The book's own blocks, d2l 1.0.3's Residual and ResNeXtBlock in torch, TensorFlow, JAX and MXNet, against
    the NumPy reference with the same weights (tests/test_d2l_conformance.py). d2l 1.0.3 pins numpy 1.23.5, so
    this environment has the old framework versions of tests/d2l-requirements.txt and none of our backends (the
    reference is what they are all held to). RESNET_REQUIRE_D2L makes a missing d2l, or a d2l framework module
    that does not import, an error instead of a skip; the one skip allowed is d2l.torch while torchvision does
    not import with the CPU-only torch, and it says so."""
    session.install("-r", "tests/d2l-requirements.txt")
    session.install("--no-deps", ".")
    session.run(
        "pytest",
        *(session.posargs or ["-q", "-rs", "tests/test_d2l_conformance.py"]),
        env={"RESNET_REQUIRE_D2L": "1", **QUIET_TF, **WRITE_BYTECODE},
    )


@nox.session
@nox.parametrize("backend", BACKENDS, ids=list(BACKENDS))
def bench(session: nox.Session, backend: str) -> None:
    """The speed benchmark in one backend's environment (not part of the default run: it takes minutes and
    wants a quiet machine): ``nox -s bench``, then ``python -m resnet.bench.report bench-results/*.json``."""
    session.install(f".[{backend}]")
    session.run(
        "python",
        "-m",
        "resnet.bench",
        "--backend",
        backend,
        "--json",
        f"bench-results/{backend}.json",
        *session.posargs,
        env=QUIET_TF,
    )
