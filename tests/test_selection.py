"""Backend selection: precedence, names, errors, and that no framework is imported that is not used."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap

import pytest
from helpers import FOUND

import resnet
from resnet import selection
from resnet.selection import BACKENDS

FRAMEWORKS = ("torch", "tensorflow", "jax", "flax", "mxnet", "keras")


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (so imports start from nothing) with extra environment variables,
    outside the source tree (``python -c`` puts its working directory first on the path, where the checkout's
    resnet/ would hide the installed package and its resnet.backends)."""
    environment = {k: v for k, v in os.environ.items() if k != "RESNET_BACKEND"}
    environment.update(env)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
        cwd=tempfile.gettempdir(),
    )


def test_import_resnet_imports_no_framework():
    result = run_python(
        f"""
        import json, sys, resnet, resnet.backends, resnet.reference, resnet.weights, resnet.shapes, resnet.d2l
        print(json.dumps([m for m in {FRAMEWORKS!r} if m in sys.modules]))
        """
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == []


OWN_MODULES = {"torch": ("torch",), "tensorflow": ("tensorflow", "keras"), "jax": ("jax", "flax"), "mxnet": ("mxnet",)}


def test_using_one_backend_imports_no_other(backend_name):
    """Using a backend imports no other framework than the ones its own framework imports by itself (in an
    environment with several, TensorFlow imports JAX when it finds it; in the matrix's, nothing)."""
    own, others = OWN_MODULES[backend_name], [m for m in FRAMEWORKS if m not in OWN_MODULES[backend_name]]
    report = f"import json, sys; print(json.dumps([m for m in {tuple(others)!r} if m in sys.modules]))"
    baseline = run_python("; ".join(f"import {m}" for m in own) + "\n" + report)
    assert baseline.returncode == 0, baseline.stderr
    result = run_python(
        """
        import resnet
        model = resnet.Residual(3)
        assert resnet.output_shape(model, (1, 3, 4, 4)) == (1, 3, 4, 4)
        print(resnet.backend())
        """
        + report,
        RESNET_BACKEND=backend_name.upper(),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-2] == backend_name
    imported_by_framework = set(json.loads(baseline.stdout.splitlines()[-1]))
    assert set(json.loads(result.stdout.splitlines()[-1])) <= imported_by_framework


def test_direct_backend_import_needs_no_environment(backend_name):
    result = run_python(
        f"""
        from resnet.backends import {backend_name} as rn
        import resnet
        print(resnet.output_shape(rn.Residual(6, True, 2), (4, 3, 6, 6)))
        """,
        RESNET_BACKEND="not-a-backend",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "(4, 6, 3, 3)"


@pytest.mark.parametrize(
    "alias, canonical",
    [
        ("PyTorch", "torch"),
        ("tf", "tensorflow"),
        ("Keras", "tensorflow"),
        ("FLAX", "jax"),
        ("gluon", "mxnet"),
        (" jax ", "jax"),
    ],
)
def test_aliases(alias, canonical):
    assert selection.canonical_backend_name(alias) == canonical


def test_unknown_name_lists_valid_names(fresh_selection):
    with pytest.raises(ValueError, match="unknown backend 'caffe'. Valid backends: torch, tensorflow, jax, mxnet"):
        resnet.set_backend("caffe")


def test_bogus_environment_variable():
    result = run_python("import resnet; resnet.Residual", RESNET_BACKEND="bogus")
    assert result.returncode != 0
    assert "ValueError: unknown backend 'bogus'. Valid backends: torch, tensorflow, jax, mxnet" in result.stderr


def test_precedence_set_backend_over_environment(fresh_selection, monkeypatch):
    monkeypatch.setenv("RESNET_BACKEND", "mxnet")
    assert resnet.backend() == "mxnet"
    resnet.set_backend("jax")
    assert resnet.backend() == "jax"


def test_auto_detection_picks_first_installed(fresh_selection):
    assert resnet.backend() == FOUND[0]
    assert selection._resolve()[1] == "auto"


def test_switching_after_use_raises(backend_name, fresh_selection):
    resnet.set_backend(backend_name)
    resnet.Residual  # first use
    assert resnet.set_backend(backend_name.upper()) == backend_name  # the same one again is fine
    other = next(name for name in BACKENDS if name != backend_name)
    with pytest.raises(RuntimeError, match=f"already '{backend_name}'.*cannot be switched to '{other}'"):
        resnet.set_backend(other)


@pytest.mark.parametrize("name", BACKENDS)
def test_missing_or_broken_framework_is_backend_unavailable(name, fresh_selection, monkeypatch):
    # Simulate a framework that is missing or fails to import with AttributeError (mxnet on numpy >= 1.24).
    import builtins

    real_import = builtins.__import__

    def failing_import(module, *args, **kwargs):
        if (
            module.split(".")[0]
            in {
                "torch": ("torch",),
                "tensorflow": ("tensorflow", "keras"),
                "jax": ("jax", "flax", "optax"),
                "mxnet": ("mxnet",),
            }[name]
        ):
            raise AttributeError("module 'numpy' has no attribute 'bool'")
        return real_import(module, *args, **kwargs)

    package = f"resnet.backends.{name}"
    for module in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
        monkeypatch.delitem(sys.modules, module)  # the package and its modules, so that importing starts afresh
    monkeypatch.setattr(builtins, "__import__", failing_import)
    monkeypatch.setenv("RESNET_BACKEND", name)
    with pytest.raises(resnet.BackendUnavailableError) as caught:
        resnet.Residual
    message = str(caught.value)
    assert f"the {name!r} backend (chosen by RESNET_BACKEND)" in message
    assert f'pip install "d2l-resnet[{name}]"' in message  # the index's "resnet" is another project's
    assert f'in a clone of the project, in its directory: pip install -e ".[{name}]"' in message
    assert isinstance(caught.value.__cause__, AttributeError)
    assert isinstance(caught.value, ImportError)


ALIASES = {"torch": "pytorch", "tensorflow": "tf", "jax": "flax", "mxnet": "gluon"}


@pytest.mark.parametrize("name", BACKENDS)
def test_command_line_choice_is_named_in_errors(name, fresh_selection, monkeypatch, capsys):
    """``resnet --backend tf ...`` says the backend was chosen by --backend, not by set_backend."""
    from resnet.cli import main

    def unavailable(module):
        raise ModuleNotFoundError(f"No module named {module!r}")

    monkeypatch.setattr(selection.importlib, "import_module", unavailable)
    assert main(["--backend", ALIASES[name], "summary", "resnet18"]) == 2
    message = capsys.readouterr().err
    assert f"the {name!r} backend (chosen by --backend) cannot be used" in message
    assert f'pip install "d2l-resnet[{name}]"' in message
    assert selection.choose_backend(name, "--backend") == name and selection._resolve() == (name, "--backend")
    resnet.set_backend(name)
    assert selection._resolve() == (name, "set_backend")


def test_install_hints_name_our_distribution():
    """pyproject's name, the README and every hint in the package say d2l-resnet, never the index's "resnet"."""
    import re
    from pathlib import Path

    root = Path(__file__).parent.parent
    assert re.search(r'(?m)^name = "d2l-resnet"$', (root / "pyproject.toml").read_text())
    assert selection.DISTRIBUTION == "d2l-resnet"
    texts = {path: path.read_text() for path in [root / "README.md", *(root / "resnet").rglob("*.py")]}
    stale = [str(path) for path, text in texts.items() if re.search(r"(?<![-\w])resnet\[", text)]
    assert not stale, f"install hints naming the index's unrelated 'resnet': {stale}"
    assert 'pip install "d2l-resnet[jax]"' in texts[root / "README.md"]


def test_mxnet_on_new_numpy_is_reported_clearly():
    """Real, not simulated: where numpy is too new for MXNet, choosing mxnet names the cause."""
    import importlib.util

    import numpy

    if importlib.util.find_spec("mxnet") is None or tuple(map(int, numpy.__version__.split(".")[:2])) < (1, 24):
        pytest.skip("needs mxnet installed beside numpy >= 1.24 (the mxnet environment pins numpy<1.24)")
    result = run_python("import resnet; resnet.Residual", RESNET_BACKEND="mxnet")
    assert "BackendUnavailableError" in result.stderr and "numpy<1.24" in result.stderr
