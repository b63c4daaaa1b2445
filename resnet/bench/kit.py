"""What the benchmark asks of a backend's stock-layer reference, and how it finds one.

Each backend package has a module ``stock`` (``backends/<name>/stock.py``) with a class ``StockKit``, a subclass
of ``Kit`` below: the chapter's models written the plain way with the framework's stock layers, the stock train
and predict steps on the framework's usual fast path, the chapter's ResNet-18 as the book's own code writes it
(the second reference), the forward+backward step that times a single block (ours and the stock one alike),
and a matrix product for the peak. The methods' docstrings are here, once. This module,
like the rest of ``resnet.bench``, imports no framework: ``load_kit`` imports the backend's ``stock`` module,
which imports the framework that the backend has already imported.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np

from resnet.bench.settings import Settings
from resnet.registry import REGISTRY

__all__ = ["Kit", "cpu_only", "load_kit"]


class Kit:
    """A backend's stock-layer reference (base of every ``backends/<name>/stock.py``'s ``StockKit``).

    Attributes:
        framework_import: the statement that imports the framework alone (``import_backend``'s reference).
        fast_path: how both sides run (``"eager"``, ``"tf.function"``, ``"jax.jit"``, ``"hybridize"``).
        has_compile: whether ``compile`` exists (torch: ``torch.compile``), for the ``*_compiled`` rows.
    """

    framework_import: str = ""
    fast_path: str = ""
    has_compile: bool = False

    def __init__(self, rn: ModuleType, settings: Settings) -> None:
        """A kit for the backend package ``rn`` (already imported) and ``settings``; ValueError for a
        ``--gpu`` the machine cannot honour."""
        self.rn = rn

    def info(self) -> dict[str, Any]:
        """What the machine section records: ``versions`` (package -> version), ``threads``, ``device`` (and,
        where there is one, ``gpu``)."""
        raise NotImplementedError(f"{type(self).__module__}.StockKit.info")

    def stock_resnet18(self, input_shape: tuple[int, ...], num_classes: int = 10) -> Any:
        """The book's ResNet-18 with the framework's stock layers, built for the NCHW ``input_shape``, on the
        device that the settings ask for."""
        raise NotImplementedError(f"{type(self).__module__}.StockKit.stock_resnet18")

    def book_resnet18(self, input_shape: tuple[int, ...], num_classes: int = 10) -> Any:
        """The chapter's ResNet-18 written the way the chapter's tab for this framework writes it (its classes,
        containers and initialization: ``tests/fixtures/d2l-resnet-chapter.md``), built for the NCHW
        ``input_shape``, on the device that the settings ask for, ready for ``book_train_step`` and
        ``book_predict``."""
        raise NotImplementedError(f"{type(self).__module__}.StockKit.book_resnet18")

    def book_train_step(self, model: Any, lr: float) -> Callable[[np.ndarray, np.ndarray], float]:
        """The train step a reader of the chapter would write for a ``book_resnet18`` model, on the fast path
        (``fast_path``): as ``stock_train_step`` (the default here) where the chapter trains the same way."""
        return self.stock_train_step(model, lr)

    def book_predict(self, model: Any) -> Callable[[np.ndarray], np.ndarray]:
        """The inference of a ``book_resnet18`` model on the fast path: as ``stock_predict`` (the default here)
        where the chapter runs the model the same way."""
        return self.stock_predict(model)

    def stock_resnext(self, input_shape: tuple[int, ...], num_channels: int, groups: int, bot_mul: float) -> Any:
        """The book's ResNeXt block with the framework's grouped convolution (``groups`` groups), built for the
        NCHW ``input_shape``, ready for ``block_step``."""
        raise NotImplementedError(f"{type(self).__module__}.StockKit.stock_resnext")

    def stock_train_step(self, model: Any, lr: float) -> Callable[[np.ndarray, np.ndarray], float]:
        """The stock SGD train step of a ``stock_resnet18`` model: NumPy NCHW batch and int64 labels in (converted
        inside the step, the plain way), the loss as a Python float out."""
        raise NotImplementedError(f"{type(self).__module__}.StockKit.stock_train_step")

    def stock_predict(self, model: Any) -> Callable[[np.ndarray], np.ndarray]:
        """The stock inference of a ``stock_resnet18`` model: NumPy NCHW batch in, the logits as NumPy out."""
        raise NotImplementedError(f"{type(self).__module__}.StockKit.stock_predict")

    def ours_block(self, model: Any) -> Any:
        """This package's built block ``model``, made ready for ``block_step`` the same way as the stock one."""
        raise NotImplementedError(f"{type(self).__module__}.StockKit.ours_block")

    def block_step(self, model: Any, x: np.ndarray, output_grad: np.ndarray) -> Callable[[], None]:
        """One synchronized forward+backward of a block (BatchNorm in training mode) on the NCHW ``x``, pulling
        back ``output_grad`` to the gradients of every weight; both converted to native tensors beforehand."""
        raise NotImplementedError(f"{type(self).__module__}.StockKit.block_step")

    def wait(self) -> None:
        """Block until the work the framework has queued is done; the harness calls it before each repeat's
        clock stops. A no-op here: the steps of the other frameworks return when their work is done."""

    def matmul(self, n: int) -> Callable[[], None]:
        """One synchronized float32 ``n`` x ``n`` matrix product on the framework's fast path."""
        raise NotImplementedError(f"{type(self).__module__}.StockKit.matmul")

    def compile(self, model: Any) -> Any:
        """``model`` compiled (only where ``has_compile``)."""
        raise NotImplementedError(f"{type(self).__module__}.StockKit has no compile (has_compile is False)")


def cpu_only(name: str, settings: Settings) -> None:
    """ValueError for ``--gpu`` or ``--mixed-precision`` in a backend whose declaration (``resnet.registry``) rules
    it out: this project installs that framework as a CPU-only build."""
    info = REGISTRY[name]
    for option, asked, capability in (
        ("--gpu", settings.gpu, "gpu"),
        ("--mixed-precision", settings.mixed_precision, "mixed_precision"),
    ):
        if asked and not getattr(info, capability):
            able = " and ".join(other.name for other in REGISTRY.values() if getattr(other, capability))
            raise ValueError(
                f"{option} is for the {able} backends; this project installs {name} as a CPU-only "
                "build. Run without it."
            )


def load_kit(rn: ModuleType, settings: Settings) -> Kit:
    """The stock-layer reference of the backend package ``rn``: ``<rn>.stock.StockKit(rn, settings)``, after
    checking the settings against the backend's declaration."""
    cpu_only(rn.NAME, settings)
    name = f"{rn.__name__}.stock"
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name != name:  # something the stock module imports is missing: say that, not this
            raise
        raise ImportError(
            f"the {rn.NAME} backend has no stock-layer reference for the benchmark: write "
            f"backends/{rn.NAME}/stock.py with a StockKit class (a resnet.bench.kit.Kit)"
        ) from error
    return module.StockKit(rn, settings)
