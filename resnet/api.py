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

A batch given to ``forward`` is checked by ``check_batch`` before anything is built or run, by one policy for
every backend (its docstring): the frameworks alone differ, some raising their own errors, some computing
numbers from a misfit batch or writing NaN into BatchNorm's running averages.
"""

from __future__ import annotations

import math
import numbers
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import numpy as np

from resnet import selection
from resnet.layouts import shape_to_native, shape_to_nchw
from resnet.shapes import block_output_shape, model_part_shapes
from resnet.specs import BlockSpec, ModelSpec

__all__ = [
    "backend_of",
    "check_batch",
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
            f"input_shape must be four positive integers in {layout} order {order}, e.g. {example}; got {input_shape!r}"
        )
    shape = tuple(int(d) for d in shape)
    if math.prod(shape) > MAX_INPUT_VALUES:
        raise ValueError(
            f"input_shape {shape} is {math.prod(shape):,} values, {math.prod(shape) * 4 / 2**30:.0f} GiB in float32 "
            f"before the first layer multiplies it; at most {MAX_INPUT_VALUES:,} are accepted. Use a smaller batch "
            "or image size (the book's is (1, 1, 96, 96))"
        )
    check_layout(shape, layout)
    return shape


#: The most values an input shape may have: 2**31 (8 GiB in float32), beyond which every framework's allocator
#: fails with its own message, or the machine swaps.
MAX_INPUT_VALUES = 2**31


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
            f'{shape}, layout="NHWC")'
        )
    if layout == "NHWC" and a in IMAGE_CHANNELS and b == c > 4:
        raise ValueError(
            f"input shape {shape} looks like NCHW ({b}x{c} images with {a} channel{'s' if a > 1 else ''}), but "
            f'layout="NHWC" (a TensorFlow or JAX model\'s own layer_summary) takes (batch, height, width, '
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


#: The kinds of NumPy dtype a batch may have (``dtype.kind``): bool, signed and unsigned integers, floats.
REAL_KINDS = "biuf"


def check_batch(model: Any, x: Any) -> np.ndarray:
    """``x`` as a NumPy batch for ``model`` in the model's precision, after checking it against the policy
    below, before anything is built or run: what ``forward`` does first, and what a training loop can call on
    each batch. The policy is the same in every backend; a batch that breaks it is refused with the error named.

    * Shape: a 4-D array in NCHW order (TypeError for what NumPy cannot make an array of; ValueError for
      another number of axes, or a shape that looks NHWC: ``check_layout``).
    * Values: real numbers. Floats, integers and booleans are converted to the model's precision (float32 or
      float64); complex numbers (whose imaginary part would be dropped), objects and strings are a TypeError.
    * Size: at least one image, and no axis of length 0 (ValueError, in either mode: in training an empty
      batch would make BatchNorm's running averages NaN).
    * Channels: those the model was built for (the ``input_channels`` hook) and those its description
      requires (a family model's ``in_channels``; a block with an identity shortcut needs as many as it puts
      out), with every part's output size at least 1 (``resnet.shapes``) (ValueError).
    * Finite values only: NaN and infinities, including float64 values beyond float32's range in a float32
      model, are a ValueError that counts them and gives the index of the first.
    """
    bk = backend_of(model)
    try:
        array = np.asarray(x)
    except (TypeError, ValueError) as error:  # ragged nested lists, for one
        message = f"x must be an array of numbers in NCHW order, but NumPy cannot make one of it: {error}"
        raise TypeError(message) from error
    if array.dtype.kind not in REAL_KINDS:
        hint = " (take x.real for the real part)" if array.dtype.kind == "c" else ""
        raise TypeError(
            f"x must hold real numbers (float, int or bool, converted to the model's precision), but its dtype is "
            f"{array.dtype}{hint}; pass a NumPy array of images, e.g. np.asarray(images, dtype=np.float32) "
            "(framework tensors: their .numpy() or .asnumpy())"
        )
    if array.ndim != 4:
        raise ValueError(
            f"x must be a 4-D array in NCHW order (batch, channels, height, width); got shape {array.shape}"
        )
    shape = tuple(int(d) for d in array.shape)
    check_layout(shape)
    if 0 in shape:
        axis = ("batch", "channels", "height", "width")[shape.index(0)]
        raise ValueError(
            f"x has no values: its {axis} axis is 0 (shape {shape}); a batch needs at least one image, with at least "
            "one channel and pixel (in training an empty batch would make BatchNorm's running averages NaN). Skip "
            "empty batches"
        )
    _check_channels(bk, model, shape)
    dtype = bk.dtype_of(model)
    with np.errstate(over="ignore"):  # an overflow to infinity is reported below, as any infinity is
        converted = np.asarray(array, dtype=dtype)
    if array.dtype.kind == "f":  # integers and booleans are finite, in either precision
        _check_finite(converted, array)
    return converted


def _check_channels(bk: ModuleType, model: Any, shape: Shape) -> None:
    """ValueError unless ``model`` takes an NCHW batch of ``shape``: its description's requirements first (they
    name the argument to change), then the channels it was built for."""
    spec = model.spec
    if isinstance(spec, ModelSpec):
        model_part_shapes(spec, shape)
    else:
        block_output_shape(spec, shape)
    built, channels = bk.input_channels(model), shape[1]
    if built is not None and built != channels:
        plural = "s" if built > 1 else ""
        raise ValueError(
            f"this {type(model).__name__} was built for {built} input channel{plural}, but x has {channels} (shape "
            f"{shape}); a model's weights fit the channels of the first batch it saw. Feed it {built}-channel NCHW "
            f"images, or build a new model for {channels} channels"
        )


def _check_finite(converted: np.ndarray, original: np.ndarray) -> None:
    """ValueError when ``converted`` (``original`` in the model's precision) holds NaN or infinities: how many
    of each, and the first one's index."""
    finite = np.isfinite(converted)
    if finite.all():
        return
    nan = int(np.isnan(converted).sum())
    infinite = int(finite.size - finite.sum()) - nan
    first = tuple(int(i) for i in np.unravel_index(int(np.argmin(finite)), converted.shape))
    overflow = ""
    if np.isfinite(original).all():
        overflow = f" (values beyond {converted.dtype}'s range, +-{np.finfo(converted.dtype).max:.3g}, become infinite)"
    raise ValueError(
        f"x holds {nan} NaN and {infinite} infinite value{'s' if infinite != 1 else ''} in the model's precision "
        f"{converted.dtype}{overflow}, the first at index {first}; inputs must be finite images. Replace them "
        "(e.g. np.nan_to_num(x)) or drop the images that hold them (x[np.isfinite(x).all(axis=(1, 2, 3))])"
    )


def forward(model: Any, x: np.ndarray, training: bool = False) -> np.ndarray:
    """Run ``model`` on a NumPy array in NCHW order and return a NumPy array (NCHW, or (N, classes)).

    ``x`` is checked first (``check_batch``: real, finite values, at least one image, the channels the model
    takes) and converted to the model's precision; nothing is built or run for a batch it refuses.

    In training mode BatchNorm normalizes with the batch statistics and updates its running averages as
    the framework does in a training step (MXNet updates them in the backward pass, so its backend runs
    one with a zero gradient).
    """
    x = check_batch(model, x)
    bk = backend_of(model)
    bk.build(model, x.shape)
    return bk.to_numpy(bk.apply(model, _native_input(bk, model, x), bool(training)))


def spec_of(model: Any) -> BlockSpec | ModelSpec:
    """The architecture description a model of this package was built from (its ``spec``)."""
    backend_of(model)  # a clear TypeError for anything else
    return model.spec
