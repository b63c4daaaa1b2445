"""Models by name, for the command line and notebooks: name -> how to build it and its default input.

Each entry builds the selected backend's native model, so ``resnet summary resnet18`` and
``resnet train --model resnet18`` work the same in every backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable

__all__ = ["MODELS", "ModelEntry", "build_model", "model_entry"]


@dataclass(frozen=True)
class ModelEntry:
    """How to build a named model from a backend module, and the NCHW input it is meant for."""

    build: Callable[[ModuleType, int], Any]  # (backend module, num_classes) -> native model
    input_shape: tuple[int, int, int, int]
    description: str


MODELS: dict[str, ModelEntry] = {
    "resnet18": ModelEntry(
        lambda rn, num_classes: rn.ResNet18(num_classes=num_classes),
        (1, 1, 96, 96),
        "the chapter's ResNet-18 (conv biases, 1 input channel), for 96x96 Fashion-MNIST",
    ),
}


def model_entry(name: str) -> ModelEntry:
    """The entry for ``name`` (case-insensitive); ValueError listing the known names otherwise."""
    key = name.strip().lower().replace("_", "-")
    for known, entry in MODELS.items():
        if known.replace("_", "-") == key:
            return entry
    raise ValueError(f"unknown model {name!r}. Known models: {', '.join(MODELS)}")


def build_model(name: str, backend: ModuleType, num_classes: int = 10) -> Any:
    """Build the named model with ``backend``'s native classes."""
    return model_entry(name).build(backend, num_classes)
