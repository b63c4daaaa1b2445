"""The contract's hooks (``resnet.contract``) for Keras models on TensorFlow: conversions, building, running,
weights."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf  # before keras, as in resnet.backends.tensorflow.layers

import keras  # isort: skip

from resnet.backends.tensorflow.layers import Sequential
from resnet.backends.tensorflow.models import ResNet

from resnet.contract import MODEL_HOOKS, declared, first_layer_channels, hook
from resnet.layouts import array_to_native, array_to_nchw, shape_to_native, weight_to_canonical, weight_to_native
from resnet.specs import BatchNormSpec, ConvSpec, DenseSpec
from resnet.walk import native_layers, native_tensors

__all__ = list(MODEL_HOOKS)

LAYOUT = declared(__name__).layout

# The attribute of each Keras layer that holds each kind of canonical tensor (running statistics are
# non-trainable weights).
_TENSOR_ATTRIBUTES = {
    ConvSpec: {"weight": "kernel", "bias": "bias"},
    BatchNormSpec: {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"},
    DenseSpec: {"weight": "kernel", "bias": "bias"},
}


@hook
def to_native(x: np.ndarray, dtype: str = "float32") -> tf.Tensor:
    return tf.constant(array_to_native(np.asarray(x, dtype=dtype), LAYOUT))


@hook
def to_numpy(y: tf.Tensor) -> np.ndarray:
    return array_to_nchw(np.asarray(y), LAYOUT)


@hook
def dtype_of(model: keras.layers.Layer) -> str:
    """Keras' ``dtype`` argument, the variable dtype of the model's policy."""
    return model.dtype_policy.variable_dtype


@hook
def device_of(model: keras.layers.Layer) -> str:
    """Where the first weight is (``"gpu:0"`` only with a GPU build of TensorFlow); before the model is built,
    where TensorFlow will put it."""
    if not model.weights:
        return "gpu:0" if tf.config.list_logical_devices("GPU") else "cpu:0"
    device = tf.DeviceSpec.from_string(model.weights[0].value.device)
    return f"{device.device_type.lower()}:{device.device_index or 0}"


@hook
def to_accelerator(model: keras.layers.Layer) -> str:
    """TensorFlow places weights and operations on a GPU by itself when its build has one; this project installs
    tensorflow-cpu, so nothing moves."""
    return device_of(model)


def _child(parent: keras.layers.Layer, name: str) -> keras.layers.Layer:
    """One step of a canonical path, by name: in a ``Sequential``, a part of a ResNet (``b2``) or a layer of its
    stem or head (``conv``, ``fc``) by its Keras name, which is its canonical name, and a block of a stage by its
    index (``0``), which is its canonical name there; in a block, a layer by attribute (``conv1``, ``downsample``)."""
    if isinstance(parent, Sequential):
        return parent.layers[int(name)] if name.isdigit() else parent.get_layer(name)
    return getattr(parent, name)


def _root(model: keras.layers.Layer) -> keras.layers.Layer:
    """Where the canonical paths start: a block itself, or the ``Sequential`` holding a ResNet's parts."""
    return model.net if isinstance(model, ResNet) else model


@hook
def is_built(model: keras.layers.Layer) -> bool:
    """Built once every layer with weights, found by the canonical walk, is."""
    return all(layer.built for layer in native_layers(model.spec, _root(model), _child).values())


@hook
def build(model: keras.layers.Layer, input_shape: tuple[int, ...]) -> None:
    """Keras' ``model.build`` with the NHWC shape: each layer takes its input size from the description, and
    nothing runs."""
    if not is_built(model):
        model.build(shape_to_native(tuple(input_shape), LAYOUT))


@hook
def input_channels(model: keras.layers.Layer) -> int | None:
    """From the variable's shape: HWIO kernels."""
    if not is_built(model):
        return None
    return first_layer_channels(model.spec, next(iter(_native_items(model).values())).shape, LAYOUT)


@hook
def apply(model: keras.layers.Layer, x: tf.Tensor, training: bool) -> tf.Tensor:
    """Eager; ``training`` goes to every BatchNorm through the blocks' ``call``."""
    return model(x, training=training)


@hook
def part_outputs(model: keras.layers.Layer, x: tf.Tensor) -> list[tuple[str, tf.Tensor]]:
    if not isinstance(model, ResNet):
        return [(type(model).__name__, apply(model, x, training=False))]
    outputs = []
    for name in model.spec.part_names:
        x = apply(_child(model.net, name), x, training=False)
        outputs.append((name, x))
    return outputs


@hook
def trainable_count(model: keras.layers.Layer) -> int:
    """BatchNorm running statistics are non-trainable weights in Keras."""
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def _native_items(model: keras.layers.Layer) -> dict[str, keras.Variable]:
    """Canonical name -> native variable; a ResNet's parts are under ``net``."""
    return native_tensors(model.spec, _root(model), _child, _TENSOR_ATTRIBUTES)


@hook
def get_arrays(model: keras.layers.Layer) -> dict[str, np.ndarray]:
    return {name: weight_to_canonical(variable.numpy(), LAYOUT) for name, variable in _native_items(model).items()}


@hook
def set_arrays(model: keras.layers.Layer, arrays: dict[str, np.ndarray]) -> None:
    native = _native_items(model)
    for name, value in arrays.items():
        native[name].assign(weight_to_native(value, LAYOUT).astype(native[name].dtype))


def _trainable_items(model: keras.layers.Layer) -> dict[str, keras.Variable]:
    """The trainable entries of ``_native_items`` (BatchNorm running statistics excluded)."""
    return {name: variable for name, variable in _native_items(model).items() if variable.trainable}


def _native_grads(model: keras.layers.Layer, grads: Sequence[tf.Tensor | None]) -> dict[str, np.ndarray]:
    """Canonical name -> gradient of each trainable tensor, in canonical layout (``grads``: the tape's
    gradients, in the order of ``_trainable_items``)."""
    return {
        name: weight_to_canonical(np.zeros(variable.shape, variable.dtype) if grad is None else grad, LAYOUT)
        for (name, variable), grad in zip(_trainable_items(model).items(), grads)
    }


@hook
def vjp(model: keras.layers.Layer, x: np.ndarray, output_grad: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Eager, under a ``tf.GradientTape``."""
    build(model, x.shape)
    variables, dtype = list(_trainable_items(model).values()), dtype_of(model)
    with tf.GradientTape() as tape:
        y = apply(model, to_native(x, dtype), training=True)
    grads = tape.gradient(y, variables, output_gradients=to_native(output_grad, dtype))
    return to_numpy(y), _native_grads(model, grads)
