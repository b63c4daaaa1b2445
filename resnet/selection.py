"""Choosing the backend framework, without importing any framework until one is used.

The order of precedence is: ``set_backend(name)`` called before first use, then the ``RESNET_BACKEND``
environment variable, then the first installed of torch, tensorflow, jax and mxnet. Installed means
found by :func:`importlib.util.find_spec`, which imports nothing.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from types import ModuleType

from resnet.registry import BACKENDS, REGISTRY, aliases

__all__ = [
    "BACKENDS",
    "DISTRIBUTION",
    "BackendUnavailableError",
    "backend",
    "backend_module",
    "canonical_backend_name",
    "choose_backend",
    "import_backend",
    "install_hint",
    "set_backend",
]

#: Accepted spellings (lower case) for each canonical name.
ALIASES: dict[str, str] = aliases()

#: The top-level module whose presence means the framework is installed.
FRAMEWORK_MODULES: dict[str, str] = {name: info.framework for name, info in REGISTRY.items()}

#: The package's name on the package index (the import name is ``resnet``; the index's ``resnet`` is another
#: project's).
DISTRIBUTION = "d2l-resnet"

#: What to type to install each backend from the package index.
INSTALL_COMMANDS: dict[str, str] = {name: f'pip install "{DISTRIBUTION}[{name}]"' for name in BACKENDS}

#: What to type in a clone of the project (in its directory) to install each backend.
CLONE_INSTALL_COMMANDS: dict[str, str] = {name: f'pip install -e ".[{name}]"' for name in BACKENDS}


def install_hint(name: str) -> str:
    """How to install backend ``name``: from the index, or from a clone of the project."""
    return f"{INSTALL_COMMANDS[name]} (or, in a clone of the project, in its directory: {CLONE_INSTALL_COMMANDS[name]})"


ENV_VAR = "RESNET_BACKEND"


class BackendUnavailableError(ImportError):
    """The chosen backend's framework is missing or fails to import."""


_chosen: str | None = None  # set by set_backend() or fixed at first use
_chosen_by: str | None = None  # where the choice came from: "set_backend", "--backend", "RESNET_BACKEND" or "auto"
_used = False  # True once a backend module has been handed out


def canonical_backend_name(name: str) -> str:
    """Return the canonical backend name for ``name`` (case-insensitive, aliases accepted).

    Raises ValueError listing the accepted names when ``name`` is not one of them.
    """
    if not isinstance(name, str):
        raise TypeError(f"a backend name must be a string, got {type(name).__name__}: {name!r}")
    key = name.strip().lower()
    if key not in ALIASES:
        accepted = ", ".join(BACKENDS)
        spellings = ", ".join(f"{a} -> {c}" for a, c in ALIASES.items() if a != c)
        raise ValueError(
            f"unknown backend {name!r}. Valid backends: {accepted} (aliases: {spellings}). "
            f"Set {ENV_VAR} or call resnet.set_backend() with one of them."
        )
    return ALIASES[key]


def set_backend(name: str) -> str:
    """Choose the backend by name before it is first used; returns the canonical name.

    Once a backend has been used, choosing another raises RuntimeError: a framework cannot be unloaded,
    so switching would leave models of two frameworks mixed. Choosing the same one again is allowed.
    To use several frameworks in one program, import the backend modules directly
    (``from resnet.backends import jax as rn``).
    """
    return choose_backend(name, "set_backend")


def choose_backend(name: str, chosen_by: str) -> str:
    """``set_backend(name)``, recording ``chosen_by`` as where the choice came from (the command line passes
    ``"--backend"``), so that errors name it; returns the canonical name."""
    global _chosen, _chosen_by
    canonical = canonical_backend_name(name)
    if _used and canonical != _chosen:
        raise RuntimeError(
            f"the backend is already {_chosen!r} (chosen by {_chosen_by}) and in use; it cannot be switched to "
            f"{canonical!r} in the same process. Call resnet.set_backend({canonical!r}) before any model is built, "
            f"or import the module directly: from resnet.backends import {canonical}"
        )
    _chosen, _chosen_by = canonical, chosen_by
    return canonical


def _resolve() -> tuple[str, str]:
    """Return (canonical name, where it came from) without importing a framework."""
    if _chosen is not None:
        return _chosen, _chosen_by or "set_backend"
    from_env = os.environ.get(ENV_VAR, "").strip()
    if from_env:
        return canonical_backend_name(from_env), ENV_VAR
    for name in BACKENDS:
        if importlib.util.find_spec(FRAMEWORK_MODULES[name]) is not None:
            return name, "auto"
    raise BackendUnavailableError(
        f"no backend framework is installed (looked for {', '.join(BACKENDS)}). Install one, for example "
        f"{install_hint(BACKENDS[0])}; the extras are {', '.join(BACKENDS)}"
    )


def backend() -> str:
    """Return the canonical name of the selected backend (``torch``, ``tensorflow``, ``jax`` or ``mxnet``).

    Importing nothing: this only resolves the choice.
    """
    return _resolve()[0]


def import_backend(name: str, chosen_by: str) -> ModuleType:
    """Import ``resnet.backends.<name>``, turning any failure into BackendUnavailableError."""
    try:
        return importlib.import_module(REGISTRY[name].module)
    except Exception as error:  # mxnet on numpy >= 1.24 raises AttributeError, not ImportError
        raise BackendUnavailableError(
            f"the {name!r} backend (chosen by {chosen_by}) cannot be used: importing its framework failed with "
            f"{type(error).__name__}: {error}. Install it with: {install_hint(name)}"
            + (f" ({REGISTRY[name].requirement})" if REGISTRY[name].requirement else "")
        ) from error


def backend_module() -> ModuleType:
    """Return the selected backend's module, importing its framework on first use."""
    global _chosen, _chosen_by, _used
    name, chosen_by = _resolve()
    module = import_backend(name, chosen_by)
    _chosen, _chosen_by, _used = name, chosen_by, True
    return module
