"""``from resnet.d2l import tensorflow as d2l``: what the chapter's TensorFlow cells use of the book's
``d2l.tensorflow``, for this package (``resnet.d2l`` says what is shared and what is not)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

import numpy as np
import tensorflow as tf  # before keras, as in resnet.backends.tensorflow.layers

import keras  # isort: skip

from resnet.backends.tensorflow.blocks import Residual, ResNeXtBlock
from resnet.backends.tensorflow.hooks import to_native
from resnet.backends.tensorflow.models import ResNet, ResNet18

from resnet import d2l as book
from resnet.contract import declared
from resnet.d2l import DataModule, HyperParameters, Trainer, add_to_class  # the framework-free part, as the book's

__all__ = [
    "DataModule", "FashionMNIST", "HyperParameters", "Trainer", "add_to_class",
    "Module", "Classifier", "to_batch", "train_and_predict",
    "cpu", "gpu", "num_gpus", "try_gpu",
    "normal", "rand",
    "ResNeXtBlock", "ResNet", "ResNet18", "Residual",
]  # fmt: skip

NAME = declared(__name__).name


class FashionMNIST(book.FashionMNIST):
    __doc__ = book.FashionMNIST.__doc__
    framework = NAME


class Module(keras.Model, book.HyperParameters):
    """The book's base of models: a ``keras.Model`` whose ``call`` runs ``self.net``, trained by ``Trainer``
    through ``training_step`` and ``configure_optimizers`` (SGD at ``self.lr``)."""

    def __init__(self, plot_train_per_epoch: int = 2, plot_valid_per_epoch: int = 1) -> None:
        super().__init__()
        # Keras 3's Model.__init__ sets an instance attribute ``loss = None`` (for compile), which would hide
        # the ``loss`` method of subclasses (Classifier's); this model is never compiled, so drop it.
        self.__dict__.pop("loss", None)
        self.save_hyperparameters()

    def loss(self, Y_hat: tf.Tensor, Y: tf.Tensor) -> tf.Tensor:
        """The training objective, defined by subclasses (``Classifier``: cross-entropy)."""
        raise NotImplementedError(f"{type(self).__name__} defines no loss(Y_hat, Y)")

    def call(self, X: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        """``self.net(X)``; the model sets ``self.net`` in its ``__init__``. Keras passes ``training`` on to
        every layer inside (BatchNorm), also to those whose ``call`` does not take it."""
        if "net" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__} has no self.net; build it in __init__, as the book does")
        return self.net(X, training=training)

    def training_step(self, batch: Sequence[tf.Tensor]) -> tf.Tensor:
        """The loss on one batch ``(X, y)``, in training mode (Keras has no ``model.train()``: the mode is an
        argument of each call)."""
        return self.loss(self(*batch[:-1], training=True), batch[-1])

    def validation_step(self, batch: Sequence[tf.Tensor]) -> tf.Tensor:
        """The loss on one validation batch, in inference mode."""
        return self.loss(self(*batch[:-1], training=False), batch[-1])

    def configure_optimizers(self) -> keras.optimizers.Optimizer:
        """Plain SGD at the model's learning rate, the book's optimizer."""
        return keras.optimizers.SGD(self.lr)


class Classifier(Module):
    """The book's base of classifiers: mean softmax cross-entropy, accuracy and ``layer_summary``."""

    def loss(self, Y_hat: tf.Tensor, Y: tf.Tensor, averaged: bool = True) -> tf.Tensor:
        """Softmax cross-entropy of logits ``Y_hat`` against integer labels ``Y``, averaged or per example."""
        losses = tf.nn.sparse_softmax_cross_entropy_with_logits(
            tf.reshape(Y, (-1,)), tf.reshape(Y_hat, (-1, Y_hat.shape[-1]))
        )
        return tf.reduce_mean(losses) if averaged else losses

    def accuracy(self, Y_hat: tf.Tensor, Y: tf.Tensor, averaged: bool = True) -> tf.Tensor:
        """The fraction of correct predictions (or 0/1 per example)."""
        predicted = tf.argmax(tf.reshape(Y_hat, (-1, Y_hat.shape[-1])), axis=1, output_type=Y.dtype)
        correct = tf.cast(predicted == tf.reshape(Y, (-1,)), tf.float32)
        return tf.reduce_mean(correct) if averaged else correct

    def layer_summary(self, X_shape: Sequence[int]) -> None:
        """Each part of ``self.net`` with its output shape, for a random batch of ``X_shape`` (NHWC)."""
        X = tf.random.normal(X_shape)
        for layer in self.net.layers:
            X = layer(X)
            print(type(layer).__name__, "output shape:\t", X.shape)


def to_batch(x: np.ndarray, labels: np.ndarray) -> tuple[tf.Tensor, tf.Tensor]:
    """A NumPy batch as the tensors the book's loaders give: float32 NHWC images, int32 labels."""
    return to_native(x), tf.constant(np.asarray(labels, np.int32))


def train_and_predict(
    model: keras.layers.Layer, accelerator: bool
) -> tuple[Callable[..., Any], Callable[[np.ndarray], np.ndarray]]:
    """``Trainer.fit``'s train step and predict function for ``model`` (TensorFlow puts it on a GPU by itself
    when its build has one, so ``accelerator`` moves nothing): this package's own, or for a book model its
    ``training_step`` and ``configure_optimizers``."""
    if not isinstance(model, Module):
        from resnet.backends.tensorflow import hooks, train

        if accelerator:
            hooks.to_accelerator(model)
        return train.make_train_step(model), train.make_predict(model)
    optimizer = None

    def step(X: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = model.training_step([X, y])
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        return loss

    # Compiled after the first, eager step; reduce_retracing: one shape-generic trace for a smaller last batch.
    compiled_step = tf.function(step, reduce_retracing=True)

    def train_step(x: np.ndarray, labels: np.ndarray, wait: bool = True) -> Any:
        nonlocal optimizer
        if optimizer is None:  # the first, eager step creates the weights and the optimizer's state
            optimizer = model.configure_optimizers()
            loss = step(*to_batch(x, labels))
        else:
            loss = compiled_step(*to_batch(x, labels))
        return float(loss) if wait else lambda: float(loss)

    compiled_predict = tf.function(lambda X: model(X, training=False), reduce_retracing=True)

    def predict(x: np.ndarray) -> np.ndarray:
        X = to_native(x)
        # Eager until the weights exist: a tf.function must not create variables after its first trace.
        return (compiled_predict(X) if model.built else model(X, training=False)).numpy()

    return train_step, predict


def cpu() -> AbstractContextManager[Any]:
    """The CPU, as a ``tf.device`` context (``with d2l.cpu():``)."""
    return tf.device("/CPU:0")


def gpu(i: int = 0) -> AbstractContextManager[Any]:
    """GPU ``i``, as a ``tf.device`` context."""
    return tf.device(f"/GPU:{i}")


def num_gpus() -> int:
    """How many GPUs TensorFlow sees (none with tensorflow-cpu, which this project installs)."""
    return len(tf.config.list_physical_devices("GPU"))


def try_gpu(i: int = 0) -> AbstractContextManager[Any]:
    """GPU ``i`` when there is one, else the CPU (the chapter trains inside ``with d2l.try_gpu():``)."""
    return gpu(i) if num_gpus() > i else cpu()


normal, rand = tf.random.normal, tf.random.uniform
