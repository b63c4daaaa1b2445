"""The benchmark's reference in TensorFlow: the chapter's models written plainly with the framework's stock layers
(Keras ``Conv2D`` with the book's ``padding='same'`` and ``groups``, ``BatchNormalization``, ``Dense``), trained
by a ``tf.function`` step with ``keras.optimizers.SGD``, and the chapter's ResNet-18 as the book writes it; the
harness (``resnet.bench``) times this package's models against them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf  # before keras, as in the backend's layers

import keras  # isort: skip

from resnet import specs
from resnet.bench.kit import Kit
from resnet.contract import declared
from resnet.layouts import shape_to_native

__all__ = ["StockKit"]

LAYOUT = declared(__name__).layout


def _to_nhwc(x: np.ndarray) -> np.ndarray:
    """An NCHW batch transposed the plain way, a view that the framework copies into its tensor (as ours does)."""
    return np.transpose(x, (0, 2, 3, 1))


# The chapter's code (TensorFlow tab), with `training` handed to BatchNorm: the book's `call(self, X)` drops
# it, and under Keras 3 BatchNorm would then run in inference mode, a different (cheaper) computation.
class Residual(keras.layers.Layer):
    """The book's residual block, with the stock Keras layers."""

    def __init__(self, num_channels: int, use_1x1conv: bool = False, strides: int = 1) -> None:
        super().__init__()
        self.conv1 = keras.layers.Conv2D(num_channels, padding="same", kernel_size=3, strides=strides)
        self.conv2 = keras.layers.Conv2D(num_channels, kernel_size=3, padding="same")
        self.conv3 = keras.layers.Conv2D(num_channels, kernel_size=1, strides=strides) if use_1x1conv else None
        self.bn1, self.bn2 = keras.layers.BatchNormalization(), keras.layers.BatchNormalization()

    def call(self, X: tf.Tensor, training: Any = None) -> tf.Tensor:
        Y = tf.nn.relu(self.bn1(self.conv1(X), training=training))
        Y = self.bn2(self.conv2(Y), training=training)
        if self.conv3 is not None:
            X = self.conv3(X)
        return tf.nn.relu(Y + X)


class ResNeXtBlock(keras.layers.Layer):
    """The book's ResNeXt block (identity shortcut), with the stock grouped ``Conv2D`` (``groups=groups``)."""

    def __init__(self, num_channels: int, groups: int, bot_mul: float) -> None:
        super().__init__()
        bot_channels = int(round(num_channels * bot_mul))
        self.conv1 = keras.layers.Conv2D(bot_channels, 1, strides=1)
        self.conv2 = keras.layers.Conv2D(bot_channels, 3, strides=1, padding="same", groups=groups)
        self.conv3 = keras.layers.Conv2D(num_channels, 1, strides=1)
        self.bn1, self.bn2, self.bn3 = (keras.layers.BatchNormalization() for _ in range(3))

    def call(self, X: tf.Tensor, training: Any = None) -> tf.Tensor:
        Y = tf.nn.relu(self.bn1(self.conv1(X), training=training))
        Y = tf.nn.relu(self.bn2(self.conv2(Y), training=training))
        Y = self.bn3(self.conv3(Y), training=training)
        return tf.nn.relu(Y + X)


# The chapter's own code (TensorFlow tab), as the book writes it: `Residual` a keras.Model whose `call(self, X)`
# takes no `training` (Keras 3 hands the caller's on to the BatchNorm layers inside through its call context),
# `Y += X`, nested Sequential models.
class BookResidual(keras.Model):
    """The chapter's ``Residual`` (TensorFlow tab), unchanged."""

    def __init__(self, num_channels: int, use_1x1conv: bool = False, strides: int = 1) -> None:
        super().__init__()
        self.conv1 = keras.layers.Conv2D(num_channels, padding="same", kernel_size=3, strides=strides)
        self.conv2 = keras.layers.Conv2D(num_channels, kernel_size=3, padding="same")
        self.conv3 = None
        if use_1x1conv:
            self.conv3 = keras.layers.Conv2D(num_channels, kernel_size=1, strides=strides)
        self.bn1 = keras.layers.BatchNormalization()
        self.bn2 = keras.layers.BatchNormalization()

    def call(self, X: tf.Tensor) -> tf.Tensor:
        Y = keras.activations.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.conv3 is not None:
            X = self.conv3(X)
        Y += X
        return keras.activations.relu(Y)


def _book_block(num_residuals: int, num_channels: int, first_block: bool = False) -> keras.Sequential:
    """The chapter's ``ResNet.block``."""
    blk = keras.Sequential()
    for i in range(num_residuals):
        if i == 0 and not first_block:
            blk.add(BookResidual(num_channels, use_1x1conv=True, strides=2))
        else:
            blk.add(BookResidual(num_channels))
    return blk


class StockKit(Kit):
    """TensorFlow: the book's Keras layers (``padding='same'``, grouped ``Conv2D``), a ``tf.function`` step
    (methods: ``resnet.bench.kit.Kit``). A CPU-only build here: the harness refuses ``--gpu`` and
    ``--mixed-precision`` from the backend's declaration."""

    framework_import = "import tensorflow, keras"
    fast_path = "tf.function"
    has_compile = False

    def info(self) -> dict[str, Any]:
        return {
            "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
            "threads": f"intra-op {tf.config.threading.get_intra_op_parallelism_threads() or 'default'}, "
            f"inter-op {tf.config.threading.get_inter_op_parallelism_threads() or 'default'}",
            "device": "cpu" if not tf.config.list_physical_devices("GPU") else "gpu",
        }

    def stock_resnet18(self, input_shape: tuple[int, ...], num_classes: int = 10) -> keras.Model:
        layers = [
            keras.layers.Conv2D(64, kernel_size=7, strides=2, padding="same"),
            keras.layers.BatchNormalization(),
            keras.layers.Activation("relu"),
            keras.layers.MaxPool2D(pool_size=3, strides=2, padding="same"),
        ]
        for i, (num_residuals, num_channels) in enumerate(specs.RESNET18_ARCH):
            for j in range(num_residuals):
                first = j == 0 and i > 0
                layers.append(Residual(num_channels, use_1x1conv=first, strides=2 if first else 1))
        layers += [keras.layers.GlobalAvgPool2D(), keras.layers.Dense(num_classes)]
        net = keras.Sequential(layers)
        net(tf.zeros(shape_to_native(input_shape, LAYOUT)))
        return net

    def book_resnet18(self, input_shape: tuple[int, ...], num_classes: int = 10) -> keras.Model:
        # The chapter's ResNet.b1, ResNet.__init__ and ResNet18.
        b1 = keras.Sequential(
            [
                keras.layers.Conv2D(64, kernel_size=7, strides=2, padding="same"),
                keras.layers.BatchNormalization(),
                keras.layers.Activation("relu"),
                keras.layers.MaxPool2D(pool_size=3, strides=2, padding="same"),
            ]
        )
        net = keras.Sequential([b1])
        for i, b in enumerate(specs.RESNET18_ARCH):
            net.add(_book_block(*b, first_block=(i == 0)))
        net.add(keras.Sequential([keras.layers.GlobalAvgPool2D(), keras.layers.Dense(units=num_classes)]))
        net(tf.zeros(shape_to_native(input_shape, LAYOUT)))
        return net

    def stock_resnext(
        self, input_shape: tuple[int, ...], num_channels: int, groups: int, bot_mul: float
    ) -> keras.layers.Layer:
        block = ResNeXtBlock(num_channels, groups, bot_mul)
        block(tf.zeros(shape_to_native(input_shape, LAYOUT)))
        return block

    def stock_train_step(self, model: keras.Model, lr: float) -> Callable[[np.ndarray, np.ndarray], float]:
        optimizer = keras.optimizers.SGD(learning_rate=lr)
        loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

        @tf.function
        def step(x: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
            with tf.GradientTape() as tape:
                loss = loss_fn(labels, model(x, training=True))
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            return loss

        def train_step(x: np.ndarray, labels: np.ndarray) -> float:
            return float(step(tf.constant(_to_nhwc(x)), tf.constant(labels)))

        return train_step

    def stock_predict(self, model: keras.Model) -> Callable[[np.ndarray], np.ndarray]:
        @tf.function
        def compiled(x: tf.Tensor) -> tf.Tensor:
            return model(x, training=False)

        return lambda x: compiled(tf.constant(_to_nhwc(x))).numpy()

    def ours_block(self, model: keras.layers.Layer) -> keras.layers.Layer:
        return model

    def block_step(self, model: keras.layers.Layer, x: np.ndarray, output_grad: np.ndarray) -> Callable[[], None]:
        xt, gt = tf.constant(_to_nhwc(x)), tf.constant(_to_nhwc(output_grad))

        @tf.function
        def forward_backward(x: tf.Tensor, g: tf.Tensor) -> list[tf.Tensor]:
            with tf.GradientTape() as tape:
                y = model(x, training=True)
            return tape.gradient(y, model.trainable_weights, output_gradients=g)

        return lambda: forward_backward(xt, gt)[0].numpy()

    def matmul(self, n: int) -> Callable[[], None]:
        rng = np.random.default_rng(0)
        a, b = (tf.constant(rng.standard_normal((n, n), dtype=np.float32)) for _ in range(2))

        @tf.function
        def product(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
            return tf.reduce_sum(tf.matmul(a, b))  # a scalar to fetch: waits for the product, copies nothing

        return lambda: product(a, b).numpy()
