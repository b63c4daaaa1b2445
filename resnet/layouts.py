"""Conversions between the canonical layouts and a backend's native ones, keyed by the layout it declares.

Canonical (what the common API, the weights files and the NumPy reference use): NCHW batches, OIHW convolution
kernels, (out, in) dense weights. A backend declares its native layout in ``resnet.registry``:

* ``"NCHW"`` (PyTorch, MXNet): the canonical layouts themselves; nothing is transposed.
* ``"NHWC"`` (TensorFlow, JAX): NHWC batches, HWIO kernels and (in, out) dense weights.

Arrays other than 4-D batches and 4-D or 2-D weights (labels, logits, vectors) are the same in both.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "LAYOUTS",
    "array_to_native",
    "array_to_nchw",
    "check_layout",
    "shape_to_native",
    "shape_to_nchw",
    "weight_to_canonical",
    "weight_to_native",
]

#: The native layouts a backend may declare.
LAYOUTS = ("NCHW", "NHWC")

# Axes that take a canonical array to the NHWC family's native layout, by number of dimensions.
_NCHW_TO_NHWC = (0, 2, 3, 1)
_NHWC_TO_NCHW = (0, 3, 1, 2)
_OIHW_TO_HWIO = (2, 3, 1, 0)
_HWIO_TO_OIHW = (3, 2, 0, 1)


def check_layout(layout: str) -> str:
    """``layout`` if it is one of ``LAYOUTS``; ValueError naming the accepted ones otherwise."""
    if layout not in LAYOUTS:
        raise ValueError(f"a backend's layout must be one of {', '.join(LAYOUTS)}; got {layout!r}")
    return layout


def array_to_native(x: np.ndarray, layout: str) -> np.ndarray:
    """An NCHW batch (or any array that is not 4-D, unchanged) in the native layout, C-contiguous."""
    x = np.asarray(x)
    if check_layout(layout) == "NHWC" and x.ndim == 4:
        x = x.transpose(_NCHW_TO_NHWC)
    return np.ascontiguousarray(x)


def array_to_nchw(y: np.ndarray, layout: str) -> np.ndarray:
    """A native batch (or any array that is not 4-D, unchanged) in NCHW order, C-contiguous."""
    y = np.asarray(y)
    if check_layout(layout) == "NHWC" and y.ndim == 4:
        y = y.transpose(_NHWC_TO_NCHW)
    return np.ascontiguousarray(y)


def shape_to_native(shape: Sequence[int], layout: str) -> tuple[int, ...]:
    """An NCHW shape in the native order."""
    shape = tuple(shape)
    return tuple(shape[axis] for axis in _NCHW_TO_NHWC) if check_layout(layout) == "NHWC" else shape


def shape_to_nchw(shape: Sequence[int], layout: str) -> tuple[int, ...]:
    """A native 4-D shape in NCHW order."""
    shape = tuple(shape)
    return tuple(shape[axis] for axis in _NHWC_TO_NCHW) if check_layout(layout) == "NHWC" else shape


def weight_to_native(value: np.ndarray, layout: str) -> np.ndarray:
    """A canonical weight in the native layout: OIHW kernels to HWIO and (out, in) dense weights to (in, out)
    for NHWC; vectors and every NCHW weight unchanged. A view where a transposition is one."""
    value = np.asarray(value)
    if check_layout(layout) == "NCHW" or value.ndim not in (2, 4):
        return value
    return value.transpose(_OIHW_TO_HWIO) if value.ndim == 4 else value.T


def weight_to_canonical(value: np.ndarray, layout: str) -> np.ndarray:
    """A native weight in the canonical layout (the inverse of ``weight_to_native``), as a C-contiguous copy."""
    value = np.asarray(value)
    if check_layout(layout) == "NHWC" and value.ndim in (2, 4):
        value = value.transpose(_HWIO_TO_OIHW) if value.ndim == 4 else value.T
    return np.array(value, order="C", copy=True)
