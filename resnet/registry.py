"""The backends this package knows, and what each declares about itself: one line registers a backend.

This module uses the standard library alone, so that the package, the test configuration and the noxfile
(which runs outside any of the project's environments) read the same list.

To add a backend, write its package ``backends/<name>/`` (the modules every backend has, implementing the
contract in ``resnet.contract``) and add its ``BackendInfo`` line to ``_REGISTERED`` below; the shared tests,
the selection rules and the test matrix then include it (README, "Adding a backend").
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BACKENDS", "REGISTRY", "BackendInfo", "aliases"]


@dataclass(frozen=True)
class BackendInfo:
    """What a backend declares about itself.

    Attributes:
        name: the canonical name; the backend is the package ``resnet.backends.<name>`` and the install extra
            ``<name>``.
        framework: the top-level module whose presence means the framework is installed (found with
            ``importlib.util.find_spec``, which imports nothing).
        title: the framework as people call it, for messages.
        layout: the native tensor layout, ``"NCHW"`` or ``"NHWC"``. It fixes the native weight layouts too: an
            NCHW backend keeps OIHW kernels and (out, in) dense weights (the canonical ones), an NHWC backend
            HWIO kernels and (in, out) dense weights (see ``resnet.layouts``).
        aliases: other accepted spellings (lower case).
        mixed_precision: whether its train steps can compute in bfloat16 with float32 weights.
        gpu: whether this project's install of the framework can run on a GPU.
        requirement: a note added to install hints (a pinned dependency, say).
    """

    name: str
    framework: str
    title: str
    layout: str
    aliases: tuple[str, ...] = ()
    mixed_precision: bool = False
    gpu: bool = False
    requirement: str = ""

    @property
    def module(self) -> str:
        """The backend's package: ``resnet.backends.<name>``."""
        return f"resnet.backends.{self.name}"


# In auto-detection order. TensorFlow and MXNet are installed here as CPU builds (tensorflow-cpu, mxnet), where
# bfloat16 gains nothing and no GPU is seen.
_REGISTERED = (
    BackendInfo("torch", "torch", "PyTorch", "NCHW", ("pytorch",), mixed_precision=True, gpu=True),
    BackendInfo("tensorflow", "tensorflow", "TensorFlow/Keras", "NHWC", ("tf", "keras")),
    BackendInfo("jax", "flax", "JAX/Flax", "NHWC", ("flax",), mixed_precision=True, gpu=True),
    BackendInfo("mxnet", "mxnet", "MXNet/Gluon", "NCHW", ("gluon", "mx"), requirement="MXNet 1.9.1 needs numpy<1.24"),
)

#: Canonical name -> declaration, in auto-detection order.
REGISTRY: dict[str, BackendInfo] = {info.name: info for info in _REGISTERED}

#: Canonical backend names, in auto-detection order.
BACKENDS: tuple[str, ...] = tuple(REGISTRY)


def aliases() -> dict[str, str]:
    """Every accepted spelling (lower case) -> canonical name: the names themselves and their aliases."""
    return {spelling: info.name for info in _REGISTERED for spelling in (info.name, *info.aliases)}
