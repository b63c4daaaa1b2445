"""The thin common API: the same calls for every backend, shapes always reported in NCHW order.

Each function finds the backend that owns ``model`` among the backend modules already imported (so a
program may mix frameworks), and otherwise uses the selected backend. Arrays cross this API as NumPy
arrays in NCHW order; the backend converts to and from its native layout.
"""

from __future__ import annotations

import numbers
import sys
from types import ModuleType
from typing import Any, Sequence

import numpy as np

from resnet import selection
from resnet.specs import BlockSpec, ModelSpec

__all__ = [
    "backend_of",
    "forward",
    "layer_summary",
    "macs",
    "num_params",
    "output_shape",
    "random_input",
    "spec_of",
    "summary_lines",
]

Shape = tuple[int, ...]


def check_input_shape(input_shape: Sequence[int]) -> Shape:
    """Validate an NCHW input shape: four positive integers."""
    try:
        shape = tuple(input_shape)
    except TypeError:
        shape = ()
    if len(shape) != 4 or any(isinstance(d, bool) or not isinstance(d, numbers.Integral) or d < 1 for d in shape):
        raise ValueError(
            f"input_shape must be four positive integers in NCHW order (batch, channels, height, width), "
            f"e.g. (1, 1, 96, 96); got {input_shape!r}"
        )
    return tuple(int(d) for d in shape)


def backend_of(model: Any) -> ModuleType:
    """The backend module that owns ``model``: the backend package one of its classes is defined in (a user's
    subclass of a backend's ``ResNet`` counts). Imports nothing that the model's creation did not."""
    for cls in type(model).__mro__:
        parts = cls.__module__.split(".")
        if parts[:2] == ["resnet", "backends"] and len(parts) > 2 and hasattr(model, "spec"):
            return sys.modules[".".join(parts[:3])]
    raise TypeError(
        f"{type(model).__module__}.{type(model).__qualname__} is not a model of this package. Build one with "
        "resnet.Residual, resnet.ResNeXtBlock, resnet.ResNet, resnet.ResNet18 or the family's builders such as "
        "resnet.resnet50 (or from resnet.backends.<name>)."
    )


def output_shape(model: Any, input_shape: Sequence[int]) -> Shape:
    """Build ``model`` for an NCHW ``input_shape``, run it once in inference mode, return the NCHW output shape."""
    shape = check_input_shape(input_shape)
    bk = backend_of(model)
    bk.build(model, shape)
    return tuple(int(d) for d in bk.to_numpy(bk.apply(model, _native_input(bk, model, _random(shape)), False)).shape)


def summary_lines(model: Any, input_shape: Sequence[int]) -> list[str]:
    """The lines ``layer_summary`` prints: one per top-level part (stem, stages, head), NCHW shapes."""
    shape = check_input_shape(input_shape)
    bk = backend_of(model)
    bk.build(model, shape)
    outputs = bk.part_outputs(model, _native_input(bk, model, _random(shape)))
    width = max(len(name) for name, _ in outputs)
    return [f"{name:<{width}}  output shape: {tuple(bk.to_numpy(y).shape)}" for name, y in outputs]


def layer_summary(model: Any, input_shape: Sequence[int]) -> None:
    """Print each top-level part of a ResNet (the stem ``b1``, the stages, the head ``last``) with its
    NCHW output shape; a single block prints one line. The text is the same in every backend."""
    print("\n".join(summary_lines(model, input_shape)))


def num_params(model: Any, input_shape: Sequence[int]) -> int:
    """Number of trainable parameters (BatchNorm running statistics excluded), building ``model`` first."""
    shape = check_input_shape(input_shape)
    bk = backend_of(model)
    bk.build(model, shape)
    return int(bk.trainable_count(model))


def macs(model: Any, input_shape: Sequence[int]) -> int:
    """Multiply-adds of one forward pass over an NCHW batch, counted from the model's description (nothing is
    built or run): convolutions and the dense layer, as torchvision's published figures count them (see
    ``resnet.shapes.macs``). ``resnet.macs(resnet.resnet50(), (1, 3, 224, 224))`` is 4.09 G."""
    from resnet.shapes import macs as count

    return count(spec_of(model), check_input_shape(input_shape))


def random_input(input_shape: Sequence[int], seed: int = 0) -> Any:
    """A standard-normal float32 tensor of NCHW ``input_shape``, in the selected backend's native layout
    (NHWC for TensorFlow and JAX). The same seed gives the same values in every backend."""
    return selection.backend_module().to_native(_random(check_input_shape(input_shape), seed))


def _random(shape: Shape, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _native_input(bk: Any, model: Any, x: np.ndarray) -> Any:
    """An NCHW NumPy batch as the backend's native input for ``model``, in the model's precision."""
    return bk.to_native(x, bk.dtype_of(model))


def forward(model: Any, x: np.ndarray, training: bool = False) -> np.ndarray:
    """Run ``model`` on a NumPy array in NCHW order and return a NumPy array (NCHW, or (N, classes)).

    In training mode BatchNorm normalizes with the batch statistics and updates its running averages as
    the framework does in a training step (MXNet updates them in the backward pass, so its backend runs
    one with a zero gradient).
    """
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"x must be a 4-D array in NCHW order, got shape {x.shape}")
    bk = backend_of(model)
    bk.build(model, x.shape)
    return bk.to_numpy(bk.apply(model, _native_input(bk, model, x), bool(training)))


def spec_of(model: Any) -> BlockSpec | ModelSpec:
    """The architecture description a model of this package was built from (its ``spec``)."""
    backend_of(model)  # a clear TypeError for anything else
    return model.spec
