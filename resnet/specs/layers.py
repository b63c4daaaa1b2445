"""Layer descriptions (convolution, BatchNorm, dense, pooling) and the numerical conventions every backend follows.

The same weights give the same numbers in every backend because:

* padding is explicit and symmetric (``padding=1`` for 3x3, ``3`` for the 7x7 stem), never ``'same'``;
* BatchNorm uses ``BN_EPSILON`` and updates its running averages as
  ``running = (1 - BN_MOMENTUM) * running + BN_MOMENTUM * batch_statistic`` with the *biased* batch
  variance (Keras, Flax and MXNet do this natively; PyTorch's own BatchNorm uses the unbiased variance
  for the running average, so the torch backend corrects it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "BN_EPSILON",
    "BN_MOMENTUM",
    "DTYPES",
    "BatchNormSpec",
    "ConvSpec",
    "DenseSpec",
    "LayerSpec",
    "PoolSpec",
    "check_dtype",
]

#: BatchNorm epsilon used by every backend (PyTorch's, Flax's and Gluon's default; Keras' is 1e-3).
BN_EPSILON = 1e-5
#: Weight of the new batch statistic in the running averages (PyTorch's convention; Keras, Flax and Gluon
#: take ``1 - BN_MOMENTUM`` as their ``momentum``).
BN_MOMENTUM = 0.1

#: The floating-point precisions a model can compute in: float32 (the default, as in the book) and float64, in
#: which every backend follows the NumPy reference's float64 path step for step (float32 rounding flips ReLU and
#: max-pooling decisions, so float32 runs drift apart after a few training steps whatever the implementation).
DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class ConvSpec:
    """A 2-D convolution with symmetric zero padding. ``in_channels`` is None until the input is known."""

    out_channels: int
    kernel: int
    stride: int = 1
    padding: int = 0
    groups: int = 1
    bias: bool = True
    in_channels: int | None = None

    def weight_shape(self) -> tuple[int, int, int, int]:
        """The canonical (OIHW) kernel shape; needs ``in_channels``."""
        if self.in_channels is None:
            raise ValueError("the kernel shape needs in_channels, which is known only once the input is")
        return (self.out_channels, self.in_channels // self.groups, self.kernel, self.kernel)


@dataclass(frozen=True)
class BatchNormSpec:
    """Batch normalization over the channel axis, with ``BN_EPSILON`` and ``BN_MOMENTUM``."""

    num_features: int | None = None


@dataclass(frozen=True)
class DenseSpec:
    """A fully connected layer; canonical weight layout is (out, in)."""

    out_features: int
    in_features: int | None = None


@dataclass(frozen=True)
class PoolSpec:
    """Max pooling with symmetric padding (padded cells never win: they count as minus infinity)."""

    kernel: int
    stride: int
    padding: int


LayerSpec = ConvSpec | BatchNormSpec | DenseSpec


def check_dtype(dtype: object) -> str:
    """The model precision ``dtype`` as one of ``DTYPES`` (NumPy dtypes and their names are accepted)."""
    try:
        name = None if dtype is None else np.dtype(dtype).name  # type: ignore[call-overload]
    except TypeError:
        name = None
    if name not in DTYPES:
        raise ValueError(
            f"dtype must be one of {', '.join(DTYPES)} (or the NumPy dtype); got {dtype!r}. "
            "Use float32 for speed, float64 to follow the NumPy reference exactly."
        )
    return name
