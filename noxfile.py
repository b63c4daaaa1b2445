"""The test matrix: one environment per backend, because MXNet 1.9.1 needs numpy<1.24 while current
TensorFlow and JAX need a newer numpy.

    nox            # all four backends, then the cross-backend session
    nox -k jax     # one backend
"""

from __future__ import annotations

import nox

BACKENDS = ("torch", "tensorflow", "jax", "mxnet")
QUIET_TF = {"TF_CPP_MIN_LOG_LEVEL": "2"}

nox.options.sessions = ["tests", "cross"]
nox.options.error_on_missing_interpreters = True


@nox.session
@nox.parametrize("backend", BACKENDS, ids=list(BACKENDS))
def tests(session: nox.Session, backend: str) -> None:
    """The shared tests against one backend. The package is installed (not editable), so the installed
    layout is what is tested; the backend is required, so a broken install fails instead of skipping."""
    session.install(f".[{backend},test]")
    session.run("pytest", *(session.posargs or ["-q"]), env={"RESNET_TEST_BACKENDS": backend, **QUIET_TF})


@nox.session
def cross(session: nox.Session) -> None:
    """Torch, TensorFlow and JAX in one environment (they share a numpy): weights saved by each load into
    the others with the same outputs, shapes agree side by side, and selection works with several
    installed. MXNet is installed without its numpy pin, so the real error for a too-new numpy is tested."""
    session.install(".[torch,tensorflow,jax,test]")
    session.install("--no-deps", "mxnet==1.9.1")
    session.run(
        "pytest",
        *(session.posargs or [
            "-q", "tests/test_weights.py", "tests/test_selection.py", "tests/test_shapes.py",
            "tests/test_notebooks.py::test_notebook_runs[backend=torch-same_weights]",  # every pair compared
        ]),
        env={"RESNET_TEST_BACKENDS": "torch,tensorflow,jax", **QUIET_TF},
    )
