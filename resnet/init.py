"""Framework-neutral initial weights, so that a seed means the same starting point in every backend.

Convolution kernels are He-normal (fan-in, as suited to ReLU networks), the dense layer uses PyTorch's
default uniform(-1/sqrt(in), 1/sqrt(in)), biases start at zero, BatchNorm at scale 1, shift 0, running
mean 0 and running variance 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from resnet.shapes import tensor_infos

__all__ = ["initial_weights"]


def initial_weights(spec, input_shape: Sequence[int], seed: int = 0) -> dict[str, np.ndarray]:
    """Canonical float32 initial weights for a block or model description and an NCHW input shape."""
    rng = np.random.default_rng(seed)
    weights = {}
    for name, info in tensor_infos(spec, tuple(input_shape)).items():
        shape = info.shape
        if name.endswith(("running_var",)) or (name.endswith("weight") and len(shape) == 1):
            value = np.ones(shape)
        elif len(shape) == 4:
            value = rng.normal(0.0, np.sqrt(2.0 / np.prod(shape[1:])), shape)
        elif len(shape) == 2:
            bound = 1.0 / np.sqrt(shape[1])
            value = rng.uniform(-bound, bound, shape)
        else:
            value = np.zeros(shape)
        weights[name] = value.astype(np.float32)
    return weights
