"""Models by name, for the command line and notebooks: name -> how to build it and its default input.

Each entry builds the selected backend's native model, so ``resnet summary resnet50`` and
``resnet train --model resnet50`` work the same in every backend.

``resnet18`` is the chapter's ResNet-18 (conv biases, any input channels, 10 classes): the default of
``resnet train`` and the model of the chapter's recipe. The family of the chapter's exercises is registered
under its builders' names (``resnet34``, ``resnet50``, ``preact_resnet18``, ``resnext50_32x4d``,
``resnet18_multigpu``...), except that torchvision's ResNet-18, ``resnet.resnet18()`` in Python, is
``resnet18-imagenet`` here. Names are case-insensitive, and ``_`` and ``-`` are the same.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from resnet.specs import FAMILY, learning_rate

__all__ = ["MODELS", "ModelEntry", "build_model", "model_entry"]


@dataclass(frozen=True)
class ModelEntry:
    """How to build a named model from a backend module, and the NCHW input and classes it is meant for.

    ``build(backend, num_classes, in_channels, dtype, **options)`` returns the native model; the options are
    the constructors' own keywords, passed only when given (``lr=`` for the model's learning rate).
    ``description`` says what the model is, not what input it is given (``input_shape`` is its default).
    """

    build: Callable[..., Any]
    input_shape: tuple[int, int, int, int]
    description: str
    num_classes: int = 10


def _family_entry(name: str) -> ModelEntry:
    """The entry of the family's model ``name``: its builder, and the input and classes it is meant for
    (ImageNet's for torchvision's models, Fashion-MNIST's 28x28 for the multi-GPU ResNet-18)."""
    model = FAMILY[name]
    return ModelEntry(
        lambda rn, num_classes, in_channels, dtype, **options: getattr(rn, name)(
            num_classes=num_classes, in_channels=in_channels, dtype=dtype, **options
        ),
        model.input_shape,
        model.description,
        num_classes=model.num_classes,
    )


MODELS: dict[str, ModelEntry] = {
    "resnet18": ModelEntry(
        # The chapter's ResNet-18 takes any number of input channels (its first convolution is lazy or built
        # from the input), so in_channels needs no argument here.
        lambda rn, num_classes, in_channels, dtype, **options: rn.ResNet18(
            num_classes=num_classes, dtype=dtype, **options
        ),
        (1, 1, 96, 96),
        "the chapter's ResNet-18 with conv biases, as trained on Fashion-MNIST at 96x96",
    ),
    **{("resnet18-imagenet" if name == "resnet18" else name): _family_entry(name) for name in FAMILY},
}


def _key(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def model_entry(name: str) -> ModelEntry:
    """The entry for ``name`` (case-insensitive, ``_`` and ``-`` alike); ValueError listing the known names."""
    for known, entry in MODELS.items():
        if _key(known) == _key(name):
            return entry
    raise ValueError(f"unknown model {name!r}. Known models: {', '.join(MODELS)}")


def build_model(
    name: str,
    backend: ModuleType,
    num_classes: int | None = None,
    in_channels: int | None = None,
    dtype: str = "float32",
    lr: float | None = None,
) -> Any:
    """Build the named model with ``backend``'s native classes, for ``num_classes`` outputs and ``in_channels``
    input channels (by default, those the model is meant for), in precision ``dtype``, keeping the learning
    rate ``lr`` as ``model.lr`` (None: the constructors' default, the book's 0.1), as the chapter's
    ``ResNet18(lr=0.01)`` does."""
    entry = model_entry(name)
    options = {} if lr is None else {"lr": learning_rate(lr)}
    return entry.build(
        backend,
        entry.num_classes if num_classes is None else num_classes,
        entry.input_shape[1] if in_channels is None else in_channels,
        dtype,
        **options,
    )
