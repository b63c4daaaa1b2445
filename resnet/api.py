"""The thin common API: the same calls for every backend, shapes always reported in NCHW order.

Each function finds the backend that owns ``model`` among the backend modules already imported (so a
program may mix frameworks), and otherwise uses the selected backend. Arrays cross this API as NumPy
arrays in NCHW order; the backend converts to and from its native layout.

A shape in the other layout is refused with a ValueError that gives the shape to pass instead. The rule is
narrow, so that no square NCHW input is ever refused: an NCHW shape ``(N, A, B, C)`` looks like NHWC when its
last axis ``C`` is 1 or 3 (grey or RGB channels) and ``A == B > 4`` (a square image). Read as NCHW, such a
shape would be ``A`` channels of ``B x C`` images, 1 or 3 pixels wide, as the book's TensorFlow and JAX
``(1, 96, 96, 1)`` would be: 96 channels of 96x1. With ``layout="NHWC"`` (a TensorFlow or JAX model's own
``layer_summary`` method) the mirror rule refuses ``(N, C, A, A)`` with ``C`` 1 or 3 and ``A > 4``, such as the
book's PyTorch ``(1, 1, 96, 96)``.
"""

from __future__ import annotations

import numbers
import sys
from types import ModuleType
from typing import Any, Sequence

import numpy as np

from resnet import selection
from resnet.layouts import shape_to_native, shape_to_nchw
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


def check_input_shape(input_shape: Sequence[int], layout: str = "NCHW") -> Shape:
    """Validate an input shape: four positive integers, in ``layout`` order (NCHW unless told)."""
    try:
        shape = tuple(input_shape)
    except TypeError:
        shape = ()
    if len(shape) != 4 or any(isinstance(d, bool) or not isinstance(d, numbers.Integral) or d < 1 for d in shape):
        order = "(batch, channels, height, width)" if layout == "NCHW" else "(batch, height, width, channels)"
        example = "(1, 1, 96, 96)" if layout == "NCHW" else "(1, 96, 96, 1)"
        raise ValueError(
            f"input_shape must be four positive integers in {layout} order {order}, e.g. {example}; "
            f"got {input_shape!r}"
        )
    shape = tuple(int(d) for d in shape)
    check_layout(shape, layout)
    return shape


#: Channel counts that make the other layout's reading of a shape look likely: grey and RGB images.
IMAGE_CHANNELS = (1, 3)


def check_layout(shape: Shape, layout: str = "NCHW") -> None:
    """ValueError for a 4-D ``shape`` that looks like the other layout (the rule is in the module's docstring):
    an NHWC image shape such as ``(1, 96, 96, 1)`` given as NCHW, or an NCHW one such as ``(1, 1, 96, 96)``
    given as NHWC. The message names the shape and the one to pass instead."""
    n, a, b, c = shape
    if layout == "NCHW" and c in IMAGE_CHANNELS and a == b > 4:
        raise ValueError(
            f"input shape {shape} looks like NHWC ({a}x{b} images with {c} channel{'s' if c > 1 else ''}), but the "
            f"common API (resnet.layer_summary, output_shape, num_params, macs, forward) takes NCHW: read so, it "
            f"is {a} channels of {b}x{c} images. For those images pass {(n, c, a, b)}. NHWC shapes go to a "
            f"TensorFlow or JAX model's own model.layer_summary({shape}), or to resnet.layer_summary(model, "
            f"{shape}, layout=\"NHWC\")"
        )
    if layout == "NHWC" and a in IMAGE_CHANNELS and b == c > 4:
        raise ValueError(
            f"input shape {shape} looks like NCHW ({b}x{c} images with {a} channel{'s' if a > 1 else ''}), but "
            f"layout=\"NHWC\" (a TensorFlow or JAX model's own layer_summary) takes (batch, height, width, "
            f"channels): read so, it is {a}x{b} images with {c} channels. For those images pass {(n, b, c, a)}, or "
            f"give the NCHW shape to the common API: resnet.layer_summary(model, {shape})"
        )


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


def summary_lines(model: Any, input_shape: Sequence[int], layout: str = "NCHW") -> list[str]:
    """The lines ``layer_summary`` prints: one per top-level part (stem, stages, head), shapes in ``layout``."""
    shape = shape_to_nchw(check_input_shape(input_shape, layout), layout)
    bk = backend_of(model)
    bk.build(model, shape)
    outputs = bk.part_outputs(model, _native_input(bk, model, _random(shape)))
    width = max(len(name) for name, _ in outputs)
    lines = []
    for name, y in outputs:
        out = bk.to_numpy(y).shape
        lines.append(f"{name:<{width}}  output shape: {shape_to_native(out, layout) if len(out) == 4 else out}")
    return lines


def layer_summary(model: Any, input_shape: Sequence[int], layout: str = "NCHW") -> None:
    """Print each top-level part of a ResNet (the stem ``b1``, the stages, the head ``last``) with its
    output shape; a single block prints one line. The text is the same in every backend: ``input_shape`` and
    the shapes printed are NCHW, or NHWC with ``layout="NHWC"`` (what a model's own ``layer_summary`` method
    uses in TensorFlow and JAX, as the book's ``model.layer_summary((1, 96, 96, 1))`` there)."""
    print("\n".join(summary_lines(model, input_shape, layout)))


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
    check_layout(tuple(int(d) for d in x.shape))
    bk = backend_of(model)
    bk.build(model, x.shape)
    return bk.to_numpy(bk.apply(model, _native_input(bk, model, x), bool(training)))


def spec_of(model: Any) -> BlockSpec | ModelSpec:
    """The architecture description a model of this package was built from (its ``spec``)."""
    backend_of(model)  # a clear TypeError for anything else
    return model.spec
