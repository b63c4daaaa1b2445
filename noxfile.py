"""The test matrix: one environment per backend, because MXNet 1.9.1 needs numpy<1.24 while current
TensorFlow and JAX need a newer numpy. ``nox`` runs all four; ``nox -k jax`` runs one."""

from __future__ import annotations

import nox

BACKENDS = ("torch", "tensorflow", "jax", "mxnet")

nox.options.sessions = ["tests"]
nox.options.error_on_missing_interpreters = True


@nox.session
@nox.parametrize("backend", BACKENDS, ids=list(BACKENDS))
def tests(session: nox.Session, backend: str) -> None:
    """Install the package with one backend (not editable, so the installed layout is what is tested) and
    run the shared tests; the backend is required, so a broken install fails instead of skipping."""
    session.install(f".[{backend},test]")
    session.run(
        "pytest",
        *(session.posargs or ["-q"]),
        env={"RESNET_REQUIRE_BACKENDS": backend, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
