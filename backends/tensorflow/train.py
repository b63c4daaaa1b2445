"""The contract's train step and predict function for Keras models: ``tf.function``s, TensorFlow's fast path."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tensorflow as tf  # before keras, as in resnet.backends.tensorflow.layers

import keras  # isort: skip

from resnet.backends.tensorflow.hooks import build, dtype_of, to_native, to_numpy

from resnet.contract import TRAIN_HOOKS, check_mixed_precision, declared, hook, learning_rate_of

__all__ = list(TRAIN_HOOKS)

NAME = declared(__name__).name


@hook
def make_train_step(
    model: keras.layers.Layer, lr: float | None = None, compile: bool = False, mixed_precision: bool = False
) -> Callable[..., float | Callable[[], float]]:
    """A ``tf.function`` with ``keras.optimizers.SGD``, always compiled, so ``compile`` changes nothing; the
    weights and the optimizer's state are created at the first call, outside the compiled function."""
    dtype = check_mixed_precision(NAME, dtype_of(model), mixed_precision)
    lr = learning_rate_of(model, lr)
    optimizer = keras.optimizers.SGD(learning_rate=lr)

    # Compiled once per input shape; reduce_retracing makes a second shape (a last, smaller batch) trace a
    # shape-generic version instead of one graph per size.
    @tf.function(reduce_retracing=True)
    def compiled_step(x: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
        grads = tape.gradient(loss, model.trainable_weights)
        optimizer.apply(grads, model.trainable_weights)
        return loss

    def train_step(x: np.ndarray, labels: np.ndarray, wait: bool = True) -> float | Callable[[], float]:
        if not optimizer.built:  # create the weights and the optimizer's state outside the compiled function
            build(model, x.shape)
            optimizer.build(model.trainable_weights)
        loss = compiled_step(to_native(x, dtype), tf.constant(np.asarray(labels, dtype=np.int64)))
        return float(loss) if wait else lambda: float(loss)

    return train_step


@hook
def make_predict(model: keras.layers.Layer, mixed_precision: bool = False) -> Callable[[np.ndarray], np.ndarray]:
    """A ``tf.function``, like the train step."""

    # Compiled like the training step (TensorFlow's fast path), one shape-generic trace for a smaller last batch.
    @tf.function(reduce_retracing=True)
    def compiled_predict(x: tf.Tensor) -> tf.Tensor:
        return model(x, training=False)

    dtype = check_mixed_precision(NAME, dtype_of(model), mixed_precision)

    def predict(x: np.ndarray) -> np.ndarray:
        build(model, x.shape)  # create the weights outside the compiled function
        return to_numpy(compiled_predict(to_native(x, dtype)))

    return predict
