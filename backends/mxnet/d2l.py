"""``from resnet.d2l import mxnet as d2l``: what the chapter's MXNet cells use of the book's ``d2l.mxnet``,
for this package (``resnet.d2l`` says what is shared and what is not)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon
from mxnet.gluon import nn
from mxnet.util import is_np_array
from resnet.backends.mxnet.blocks import Residual, ResNeXtBlock
from resnet.backends.mxnet.hooks import to_native
from resnet.backends.mxnet.layers import semantics_of
from resnet.backends.mxnet.models import ResNet, ResNet18

from resnet import d2l as book
from resnet.contract import declared
from resnet.d2l import DataModule, HyperParameters, Trainer, add_to_class  # the framework-free part, as the book's

__all__ = [
    "DataModule", "FashionMNIST", "HyperParameters", "Trainer", "add_to_class",
    "Module", "Classifier", "to_batch", "train_and_predict",
    "cpu", "gpu", "num_gpus", "try_gpu",
    "normal", "rand", "randn",
    "ResNeXtBlock", "ResNet", "ResNet18", "Residual",
]  # fmt: skip

NAME = declared(__name__).name

# The chapter calls ``npx.set_np()`` first, and then Gluon takes and returns ``mxnet.numpy`` arrays; without it,
# legacy NDArrays. Everything here makes arrays of the current semantics, except where a model is run: there,
# in the semantics the model was made in (``Module`` records them as ``_numpy``, as ``layers.BothSemantics``
# does, so that ``layers.semantics_of`` finds them), since a Gluon layer is bound to those.


class FashionMNIST(book.FashionMNIST):
    __doc__ = book.FashionMNIST.__doc__
    framework = NAME


class Module(nn.Block, book.HyperParameters):
    """The book's base of models: a Gluon ``Block`` whose ``forward`` runs ``self.net``, trained by ``Trainer``
    through ``training_step`` and ``configure_optimizers`` (``gluon.Trainer``'s SGD at ``self.lr``), in the
    numpy semantics it was made in (``npx.set_np()`` or not)."""

    def __init__(self, plot_train_per_epoch: int = 2, plot_valid_per_epoch: int = 1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self._numpy = is_np_array()

    def loss(self, Y_hat: mx.nd.NDArray, Y: mx.nd.NDArray) -> mx.nd.NDArray:
        """The training objective, defined by subclasses (``Classifier``: cross-entropy)."""
        raise NotImplementedError(f"{type(self).__name__} defines no loss(Y_hat, Y)")

    def forward(self, X: mx.nd.NDArray) -> mx.nd.NDArray:
        """``self.net(X)``; the model sets ``self.net`` in its ``__init__``."""
        if "net" not in self._children:
            raise AttributeError(f"{type(self).__name__} has no self.net; build it in __init__, as the book does")
        return self.net(X)

    def training_step(self, batch: Sequence[mx.nd.NDArray]) -> mx.nd.NDArray:
        """The loss on one batch ``(X, y)`` (within ``autograd.record()``, for a gradient)."""
        return self.loss(self(*batch[:-1]), batch[-1])

    def validation_step(self, batch: Sequence[mx.nd.NDArray]) -> mx.nd.NDArray:
        """The loss on one validation batch."""
        return self.loss(self(*batch[:-1]), batch[-1])

    def configure_optimizers(self) -> gluon.Trainer:
        """Plain SGD at the model's learning rate, the book's optimizer: ``trainer.step(1)`` after the mean loss's
        backward."""
        with semantics_of(self):  # the optimizer's state takes the kind of the parameters' arrays
            return gluon.Trainer(self.collect_params(), "sgd", {"learning_rate": self.lr})


class Classifier(Module):
    """The book's base of classifiers: mean softmax cross-entropy, accuracy and ``layer_summary``."""

    def loss(self, Y_hat: mx.nd.NDArray, Y: mx.nd.NDArray, averaged: bool = True) -> mx.nd.NDArray:
        """Softmax cross-entropy of logits ``Y_hat`` against integer labels ``Y``, averaged or per example."""
        # Made per call, as the book's: Gluon picks its operators by the semantics current when it runs.
        per_example = gluon.loss.SoftmaxCrossEntropyLoss()(Y_hat.reshape((-1, Y_hat.shape[-1])), Y.reshape((-1,)))
        return per_example.mean() if averaged else per_example

    def accuracy(self, Y_hat: mx.nd.NDArray, Y: mx.nd.NDArray, averaged: bool = True) -> mx.nd.NDArray:
        """The fraction of correct predictions (or 0/1 per example)."""
        # argmax is float32 for NDArrays and int64 for mxnet.numpy arrays: compared in the labels' dtype.
        predicted = Y_hat.reshape((-1, Y_hat.shape[-1])).argmax(axis=1).astype(Y.dtype)
        correct = (predicted == Y.reshape((-1,))).astype("float32")
        return correct.mean() if averaged else correct

    def layer_summary(self, X_shape: Sequence[int]) -> None:
        """Each part of ``self.net`` with its output shape, for a random batch of ``X_shape`` (NCHW)."""
        with semantics_of(self):
            X = randn(*X_shape)
            for layer in self.net:
                X = layer(X)
                print(type(layer).__name__, "output shape:\t", X.shape)


def to_batch(x: np.ndarray, labels: np.ndarray) -> tuple[mx.nd.NDArray, mx.nd.NDArray]:
    """A NumPy batch as the arrays the book's loaders give: float32 NCHW images, int32 labels, as
    ``mxnet.numpy`` arrays under numpy semantics and legacy NDArrays otherwise."""
    array = mx.np.array if is_np_array() else mx.nd.array
    return to_native(x), array(np.asarray(labels, np.int32), dtype="int32")


def train_and_predict(
    model: nn.Block, accelerator: bool
) -> tuple[Callable[..., Any], Callable[[np.ndarray], np.ndarray]]:
    """``Trainer.fit``'s train step and predict function for ``model`` (on a GPU when ``accelerator`` and one
    is seen): this package's own, or for a book model its ``training_step`` and ``configure_optimizers``."""
    if not isinstance(model, Module):
        from resnet.backends.mxnet import hooks, train

        if accelerator:
            hooks.to_accelerator(model)
        return train.make_train_step(model), train.make_predict(model)
    device = try_gpu() if accelerator else cpu()
    if device.device_type != "cpu":  # this project's CPU build sees none; a GPU build's parameters move there
        model.collect_params().reset_ctx(device)
    trainer = None

    def train_step(x: np.ndarray, labels: np.ndarray, wait: bool = True) -> Any:
        nonlocal trainer
        with semantics_of(model):
            batch = [a.as_in_context(device) for a in to_batch(x, labels)]
            with autograd.record():  # training mode: BatchNorm on the batch's statistics
                loss = model.training_step(batch)
            if trainer is None:  # after the first pass, which creates the deferred parameters' arrays
                trainer = model.configure_optimizers()
            loss.backward()
            trainer.step(1)  # the loss is already the batch's mean

        def value() -> float:
            return float(loss.asnumpy().item())  # waits: MXNet runs asynchronously

        return value() if wait else value

    def predict(x: np.ndarray) -> np.ndarray:
        with semantics_of(model), autograd.predict_mode():
            return model(to_native(x).as_in_context(device)).asnumpy()

    return train_step, predict


def cpu() -> mx.Context:
    """The CPU."""
    return mx.cpu()


def gpu(i: int = 0) -> mx.Context:
    """GPU ``i``."""
    return mx.gpu(i)


def num_gpus() -> int:
    """How many GPUs MXNet sees (none with the CPU build this project installs)."""
    return mx.context.num_gpus()


def try_gpu(i: int = 0) -> mx.Context:
    """GPU ``i`` when there is one, else the CPU."""
    return gpu(i) if num_gpus() > i else cpu()


# The book's are mxnet.np.random's, which need numpy semantics: these follow the semantics current at the call.
def normal(loc: float = 0.0, scale: float = 1.0, size: int | Sequence[int] | None = None, **kwargs: Any) -> Any:
    """Samples of a normal distribution, of shape ``size``: ``mxnet.np.random.normal`` under numpy semantics,
    ``mx.nd.random.normal`` otherwise."""
    if is_np_array():
        return mx.np.random.normal(loc, scale, size, **kwargs)
    return mx.nd.random.normal(loc, scale, **({} if size is None else {"shape": size}), **kwargs)


def rand(*shape: int, **kwargs: Any) -> Any:
    """Uniform samples in [0, 1) of ``shape``: ``mxnet.np.random.rand`` or ``mx.nd.random.uniform``."""
    return mx.np.random.rand(*shape, **kwargs) if is_np_array() else mx.nd.random.uniform(0, 1, shape, **kwargs)


def randn(*shape: int, **kwargs: Any) -> Any:
    """Standard normal samples of ``shape``: ``mxnet.np.random.randn`` or ``mx.nd.random.randn``."""
    return (mx.np.random.randn if is_np_array() else mx.nd.random.randn)(*shape, **kwargs)
