"""A stand-in for the book's ``d2l`` package, so that the chapter's code runs against this package.

Where the chapter writes ``from d2l import torch as d2l``, write ``from resnet.d2l import torch as d2l`` (or
``tensorflow``, ``jax``, ``mxnet``: the book's own module names, which are this package's backend names). That
module has what the chapter's cells use: ``add_to_class``, ``HyperParameters``, the ``Module`` and
``Classifier`` bases that the chapter's ``class ResNet(d2l.Classifier)`` builds on, ``Trainer``,
``FashionMNIST``, the device helpers (``cpu``, ``gpu``, ``num_gpus``, ``try_gpu``), the framework's random
helpers (``randn``, ``normal``, ``get_key``...), PyTorch's ``init_cnn``, and this package's ``Residual``,
``ResNeXtBlock``, ``ResNet`` and ``ResNet18`` (the book's d2l saves the first two). It is not the whole of d2l:
only what the ResNet chapter needs, written for this package.

What is the same in every framework lives here: ``add_to_class``, ``HyperParameters``, the data module on the
package's one NumPy pipeline (``resnet.data``) and the ``Trainer`` loop. The framework's parts are in
``resnet.backends.<name>.d2l``. ``Trainer.fit`` trains this package's models with their backend's own train
step (``make_train_step``, from the model's ``lr``), and a model of the book's kind (a subclass of the
stand-in's ``Classifier``) with its ``loss`` and ``configure_optimizers``, as the book's trainer does.

``import resnet.d2l`` imports no framework; ``resnet.d2l.torch`` imports PyTorch on first access.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from types import ModuleType
from typing import Any, ClassVar

import numpy as np

from resnet.batches import Batches
from resnet.data import FASHION_MNIST_CLASSES, load_dataset
from resnet.registry import REGISTRY

__all__ = ["DataModule", "FashionMNIST", "HyperParameters", "Loader", "Trainer", "add_to_class"]


def __getattr__(name: str) -> ModuleType:
    # PEP 562: ``from resnet.d2l import torch as d2l`` imports the framework's part only then.
    if name in REGISTRY:
        from resnet.selection import import_backend

        import_backend(name, f"from resnet.d2l import {name}")  # a clear error if the framework is missing
        return importlib.import_module(f"{REGISTRY[name].module}.d2l")
    raise AttributeError(
        f"module 'resnet.d2l' has no attribute {name!r}; the book's modules are {', '.join(REGISTRY)} "
        "(from resnet.d2l import torch as d2l)"
    )


def add_to_class(Class: type) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The book's decorator: ``@add_to_class(ResNet)`` above ``def block(self, ...)`` makes the function a
    method of the class, defined after the class itself (as the chapter builds ``ResNet`` cell by cell)."""

    def register(function: Callable[..., Any]) -> Callable[..., Any]:
        setattr(Class, function.__name__, function)
        return function

    return register


class HyperParameters:
    """The book's mixin: ``self.save_hyperparameters()`` inside ``__init__`` stores its arguments."""

    def save_hyperparameters(self, ignore: Sequence[str] = ()) -> None:
        """Make each argument of the calling ``__init__`` an attribute of ``self`` (and collect them in
        ``self.hparams``), except ``self``, names starting with an underscore and those in ``ignore``."""
        caller = inspect.currentframe().f_back  # type: ignore[union-attr]
        arguments = inspect.getargvalues(caller)  # type: ignore[arg-type]
        names = [*arguments.args, *filter(None, (arguments.varargs, arguments.keywords))]
        skipped = {"self", *ignore}
        hparams = {name: arguments.locals[name] for name in names if name not in skipped and not name.startswith("_")}
        self.hparams = hparams
        for name, value in hparams.items():
            setattr(self, name, value)


def framework_module(model: Any) -> ModuleType:
    """The backend package (``resnet.backends.<name>``) that one of the classes of ``model`` comes from: this
    package's models, and the book's models built on a stand-in ``Module`` or ``Classifier``."""
    for cls in type(model).__mro__:
        parts = cls.__module__.split(".")
        if parts[:2] == ["resnet", "backends"] and len(parts) > 2 and parts[2] in REGISTRY:
            return sys.modules[".".join(parts[:3])]
    raise TypeError(
        f"{type(model).__module__}.{type(model).__qualname__} is neither a model of this package nor built on "
        "the stand-in d2l's Module or Classifier; Trainer.fit trains those (class ResNet(d2l.Classifier), with "
        "d2l from resnet.d2l)"
    )


class Loader:
    """One split's batches as the framework's tensors, ``(X, y)``: what the book's data loaders give, with
    ``len()``. Each pass over a training loader is a new epoch, shuffled differently."""

    def __init__(self, batches: Batches, convert: Callable[[np.ndarray, np.ndarray], tuple[Any, Any]]) -> None:
        self.batches, self.convert, self.passes = batches, convert, 0

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        self.passes += 1
        for x, labels in self.batches.epoch(self.passes):
            yield self.convert(x, labels)


class DataModule(HyperParameters):
    """The book's data module: ``train_dataloader()`` and ``val_dataloader()`` from ``get_dataloader(train)``.
    ``root`` is where data is kept (None: ``resnet.data.default_data_dir()``, ``RESNET_DATA``)."""

    #: The backend whose tensors the loaders give, set by each framework's subclass.
    framework: ClassVar[str] = ""

    def __init__(self, root: str | os.PathLike | None = None, num_workers: int = 4) -> None:
        self.save_hyperparameters()

    def get_dataloader(self, train: bool) -> Loader:
        """The training (``train=True``) or validation loader."""
        raise NotImplementedError(f"{type(self).__name__} defines no get_dataloader(train)")

    def train_dataloader(self) -> Loader:
        """The training loader."""
        return self.get_dataloader(train=True)

    def val_dataloader(self) -> Loader:
        """The validation loader."""
        return self.get_dataloader(train=False)


def _square_size(resize: Any) -> int:
    """The book's ``resize=(96, 96)`` (or ``96``) as the one side this pipeline resizes to."""
    sides = (resize, resize) if isinstance(resize, int) else tuple(resize) if isinstance(resize, Sequence) else ()
    if len(sides) != 2 or sides[0] != sides[1] or not all(isinstance(s, int) and s > 0 for s in sides):
        raise ValueError(
            f"resize must be square, as the book's (96, 96): a positive int or (size, size), got {resize!r}"
        )
    return sides[0]


class FashionMNIST(DataModule):
    """The book's ``FashionMNIST(batch_size=64, resize=(28, 28))``, on this package's pipeline.

    The images come from ``resnet.data.load_dataset(dataset, root)``: Fashion-MNIST, cached or downloaded
    with its checksums verified, and with ``dataset="auto"`` (the default) the offline digits set, loudly, when
    it cannot be had. They are scaled to [0, 1] and resized bilinearly in NumPy, so every framework sees the
    same pixels. Beyond the book's arguments: ``dataset`` (``"auto"``, ``"fashion-mnist"``, ``"digits"``),
    ``num_examples`` (keep only the first so many training and validation images, for a quick run) and
    ``seed`` (the shuffling seed).
    """

    def __init__(
        self,
        batch_size: int = 64,
        resize: int | tuple[int, int] = (28, 28),
        root: str | os.PathLike | None = None,
        num_workers: int = 4,
        dataset: str = "auto",
        num_examples: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(root, num_workers)
        self.save_hyperparameters()
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if num_examples is not None and (not isinstance(num_examples, int) or num_examples < 1):
            raise ValueError(f"num_examples must be a positive integer or None (all), got {num_examples!r}")
        self.size = _square_size(resize)
        data = load_dataset(dataset, root)
        if data.note:
            print(data.note, *(f"  {line}" for line in data.details), sep="\n")
        self.dataset = data.name
        keep = slice(0, num_examples)
        self.train = (data.train_images[keep], data.train_labels[keep])
        self.val = (data.val_images[keep], data.val_labels[keep])
        self.classes = data.classes if data.name != "fashion-mnist" else FASHION_MNIST_CLASSES

    def text_labels(self, indices: Sequence[Any]) -> list[str]:
        """The class names of label indices."""
        return [self.classes[int(i)] for i in indices]

    def batches(self, train: bool) -> Batches:
        """One split as NumPy NCHW batches (``resnet.batches.Batches``), shuffled per epoch when ``train``."""
        images, labels = self.train if train else self.val
        return Batches(images, labels, self.batch_size, self.size, shuffle=train, seed=self.seed)

    def get_dataloader(self, train: bool) -> Loader:
        """The split's batches as the framework's tensors, in its layout (NHWC in TensorFlow and JAX)."""
        module = importlib.import_module(f"{REGISTRY[self.framework].module}.d2l")
        return Loader(self.batches(train), module.to_batch)


class Trainer(HyperParameters):
    """The book's ``Trainer(max_epochs, num_gpus=0, gradient_clip_val=0)``; ``fit(model, data)`` trains.

    This package's models train with their backend's own fast step (jit, tf.function, a hybridized graph or
    eager PyTorch) at their ``lr``; the book's models (subclasses of the stand-in ``Classifier``) with their
    ``loss`` and ``configure_optimizers``. Each epoch shows a progress bar and prints one line: the mean
    training loss, the validation loss and accuracy. ``num_gpus > 0`` trains on a GPU when the framework sees
    one, as the book's trainer. ``history`` keeps one dict per epoch.
    """

    def __init__(self, max_epochs: int, num_gpus: int = 0, gradient_clip_val: float = 0) -> None:
        self.save_hyperparameters()
        if isinstance(max_epochs, bool) or not isinstance(max_epochs, int) or max_epochs < 1:
            raise ValueError(f"max_epochs must be a positive integer, got {max_epochs!r}")
        if isinstance(num_gpus, bool) or not isinstance(num_gpus, int) or num_gpus < 0:
            raise ValueError(f"num_gpus must be a non-negative integer, got {num_gpus!r}")
        if gradient_clip_val:
            raise ValueError(
                "gradient clipping is not part of this stand-in (the ResNet chapter trains without it); pass "
                "gradient_clip_val=0"
            )
        self.history: list[dict[str, float]] = []
        self.state: Any = None

    def fit(self, model: Any, data: FashionMNIST) -> None:
        """Train ``model`` on ``data`` for ``max_epochs`` epochs, appending to ``history``."""
        from resnet.training import _train_epoch, evaluate

        backend = framework_module(model)
        if data.framework != backend.NAME:
            raise ValueError(
                f"the data module is resnet.d2l.{data.framework}'s but the model is a {backend.NAME} model; make "
                f"both with the same framework's d2l (from resnet.d2l import {backend.NAME} as d2l)"
            )
        book = importlib.import_module(f"{backend.__name__}.d2l")
        self.model, self.data = model, data
        train_step, predict = book.train_and_predict(model, self.num_gpus > 0)
        for epoch in range(1, self.max_epochs + 1):
            _, train_loss, seconds = _train_epoch(train_step, data.batches(True), epoch, self.max_epochs, True)
            val_loss, val_acc = evaluate(predict, data.batches(False))
            row = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_acc": val_acc}
            self.history.append(row)
            print(
                f"epoch {epoch}/{self.max_epochs}: train_loss {train_loss:.4f}, val_loss {val_loss:.4f}, "
                f"val_acc {val_acc:.4f} ({len(data.train[1]) / seconds:.0f} images/s)"
            )
        self.state = getattr(train_step, "state", None)
