"""ResNet and ResNeXt from the Dive into Deep Learning chapter, in PyTorch, TensorFlow/Keras, JAX/Flax and
MXNet/Gluon, with the same shapes and the same numbers from the same weights.

``import resnet`` imports no framework. The model names (``resnet.Residual``, ``resnet.ResNeXtBlock``,
``resnet.ResNet``, ``resnet.ResNet18``, the family's blocks ``resnet.BasicBlock``, ``resnet.Bottleneck``,
``resnet.PreActBasic``, ``resnet.PreActBottleneck`` and builders ``resnet.resnet18`` ...
``resnet.resnext101_32x8d``) resolve on first access to the selected backend's native classes and
functions; choose the backend with :func:`set_backend` or the ``RESNET_BACKEND`` environment variable. To
use a backend without the global choice, import it directly: ``from resnet.backends import jax as rn``.
"""

from __future__ import annotations

from typing import Any

from resnet.api import forward, layer_summary, macs, num_params, output_shape, random_input, summary_lines
from resnet.contract import CLASSES
from resnet.selection import BACKENDS, BackendUnavailableError, backend, set_backend
from resnet.specs import FAMILY
from resnet.weights import WeightsMismatchError, load_weights, save_weights

__version__ = "0.1.0"

#: Names looked up in the selected backend's module on first access: the chapter's classes, the family's
#: blocks, and the family's builder functions (the same names in every backend; see resnet.contract).
BACKEND_NAMES: tuple[str, ...] = (*CLASSES, *FAMILY)

__all__ = [
    "BACKENDS",
    "BackendUnavailableError",
    "WeightsMismatchError",
    "backend",
    "forward",
    "layer_summary",
    "load_weights",
    "macs",
    "num_params",
    "output_shape",
    "random_input",
    "save_weights",
    "set_backend",
    "summary_lines",
    *BACKEND_NAMES,
]


def __getattr__(name: str) -> Any:
    # PEP 562: the model classes come from the backend chosen at first use, which is only then imported.
    if name in BACKEND_NAMES:
        from resnet.selection import backend_module

        return getattr(backend_module(), name)
    raise AttributeError(f"module 'resnet' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(BACKEND_NAMES))
