"""Fixtures and hooks: every test that takes ``rn`` runs once per backend under test, named in its ID.

The backends under test are ``helpers.INSTALLED``: those installed here, or exactly those named in
``RESNET_TEST_BACKENDS``, in which case a missing one is a usage error instead of a smaller matrix.
"""

from __future__ import annotations

import importlib
import tempfile
from collections.abc import Iterator

import pytest
from helpers import FOUND, INSTALLED, REQUIRED

from resnet.registry import BACKENDS, REGISTRY


def pytest_configure(config: pytest.Config) -> None:
    missing = [name for name in REQUIRED if name not in FOUND]
    unknown = [name for name in REQUIRED if name not in BACKENDS]
    if missing or unknown:
        raise pytest.UsageError(
            f"RESNET_TEST_BACKENDS asks for {', '.join(REQUIRED)} but {', '.join(missing)} is not installed "
            f"here (valid names: {', '.join(BACKENDS)}); install it (pip install -e '.[<backend>,test]') or run nox"
        )
    if not INSTALLED:
        raise pytest.UsageError("no backend framework is installed; install one, e.g. pip install -e '.[torch,test]'")


def pytest_report_header(config: pytest.Config) -> str:
    return f"resnet backends under test: {', '.join(INSTALLED)}"


@pytest.fixture(scope="session", autouse=True)
def temporary_files_under_basetemp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Temporary files of the tests and of the processes they start (torchrun's log folders, ipykernel's
    kernel specs, autograph's modules, the data of a subprocess) go under pytest's own temporary folder, which
    pytest prunes (it keeps the last three runs'), instead of piling up in the system's."""
    patch = pytest.MonkeyPatch()
    patch.setenv("TMPDIR", str(tmp_path_factory.mktemp("tmp")))
    patch.setattr(tempfile, "tempdir", None)  # gettempdir() reads TMPDIR again
    yield
    patch.undo()


@pytest.fixture(params=INSTALLED, ids=[f"backend={name}" for name in INSTALLED])
def backend_name(request: pytest.FixtureRequest) -> str:
    """The canonical name of the backend under test."""
    return request.param


@pytest.fixture
def rn(backend_name: str):
    """The backend module under test, imported directly (no global backend choice involved)."""
    return importlib.import_module(REGISTRY[backend_name].module)


@pytest.fixture
def fresh_selection(monkeypatch: pytest.MonkeyPatch):
    """A backend choice that starts unmade and is undone after the test."""
    from resnet import selection

    monkeypatch.setattr(selection, "_chosen", None)
    monkeypatch.setattr(selection, "_chosen_by", None)
    monkeypatch.setattr(selection, "_used", False)
    monkeypatch.delenv("RESNET_BACKEND", raising=False)
    return selection
