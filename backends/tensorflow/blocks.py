"""The chapter's residual and ResNeXt blocks and the family's blocks as Keras layers (NHWC).

The blocks are ``keras.layers.Layer``s, as Keras advises for a piece nested inside a network (the network is a
``keras.Model``, ``resnet.backends.tensorflow.models``): a block still works on its own (every hook takes a
Layer), without the training machinery a Model would carry into each stage. Unlike the book's code, every
``call`` takes ``training`` and hands it to BatchNorm: under Keras 3 the book's models train with BatchNorm in
inference mode.

Every block and layer serialises as Keras expects (``get_config``, ``from_config``, registered as ``resnet>Name``),
builds in ``build(input_shape)`` (Keras' ``layer.build``, and ``keras.models.load_model``), and carries its
canonical name as its Keras name (``conv1``, ``bn1``, ``downsample``), so that the weights' Keras paths are
the canonical ones: ``residual/conv1/kernel`` for a block alone (its own name is Keras' counted one), and
``resnet18/net/b2/0/conv1/kernel`` in a model (``resnet.backends.tensorflow.models``).
"""

from __future__ import annotations

import inspect
from typing import Any

import tensorflow as tf  # before keras, as in resnet.backends.tensorflow.layers

import keras  # isort: skip

from resnet.backends.tensorflow.layers import Shortcut, check_policy, make_layer, serializable

from resnet import specs
from resnet.docs import CLASS_DOCS
from resnet.specs import BatchNormSpec, BlockSpec, ConvSpec, LayerSpec
from resnet.walk import attach_layers, layers

__all__ = ["BasicBlock", "Bottleneck", "PreActBasic", "PreActBottleneck", "ResNeXtBlock", "Residual"]


def _input_channels(layer: LayerSpec) -> int | None:
    """The input channels of a layer description made with known input sizes (``walk.layers(spec, channels)``)."""
    if isinstance(layer, ConvSpec):
        return layer.in_channels
    if isinstance(layer, BatchNormSpec):
        return layer.num_features
    return layer.in_features


class Block(keras.layers.Layer):
    """What every block shares: its description ``spec``, its layers, named as the description names them, in
    the block's dtype policy, the check of its input, its build and its Keras config."""

    def __init__(self, spec: BlockSpec, **kwargs: Any) -> None:
        # A block alone keeps Keras' counted name (residual, residual_1, ...), so that several compose in one
        # functional model, which needs distinct names; in a model, each is named by its index in its stage.
        super().__init__(**kwargs)  # sets the dtype policy, which every layer of the block takes
        check_policy(self)
        self.spec = spec
        attach_layers(
            self,
            spec,
            lambda layer: make_layer(layer, self.dtype_policy),
            lambda conv_spec, batch_norm: Shortcut(conv_spec, batch_norm, dtype=self.dtype_policy),
        )
        # Each layer's Keras name is its attribute's (conv1, bn1, ...), the canonical one. Renamed here, before
        # anything is built: Keras reads a layer's name into its weights' paths when it builds.
        for name in spec.layers():
            if "." not in name:  # downsample's layers are named by Shortcut
                getattr(self, name).name = name

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        """Build every layer (``block.build(input_shape)``, or Keras at the first call): each learns its input
        channels from the block's description, so nothing runs."""
        self.check_input(input_shape)
        channels = input_shape[-1]
        if channels is None:  # unknown channels: the layers build at their first call
            return
        for path, layer in layers(self.spec, int(channels)):
            child = getattr(self, path[0])  # downsample's layers build through downsample
            if not child.built:
                child.build((input_shape[0], None, None, _input_channels(layer)))

    def get_config(self) -> dict[str, Any]:
        """Keras' config: the name, trainability and dtype policy, and the block's arguments (those of the
        class of its kind, e.g. ``num_channels``, ``use_1x1conv``, ``strides`` for ``Residual``)."""
        block_class = globals()[specs.BLOCK_CLASSES[self.spec.kind]]
        names = list(inspect.signature(block_class.__init__).parameters)[1:]  # after self
        return {**super().get_config(), **dict(zip(names, specs.constructor_arguments(self.spec)))}

    def check_input(self, input_shape: tuple[int | None, ...]) -> None:
        """The identity shortcut needs the input to have the output's shape: a clear error, not a broadcast one.

        Blocks check in ``build`` (the first call), where Keras passes errors on unchanged, and in every call,
        where it prefixes them with the call's arguments."""
        specs.check_block_input(self.spec, input_shape[-1])


@serializable
class Residual(Block):
    __doc__ = CLASS_DOCS["Residual"]

    def __init__(self, num_channels: int, use_1x1conv: bool = False, strides: int = 1, **kwargs: Any) -> None:
        super().__init__(specs.residual(num_channels, use_1x1conv, strides), **kwargs)

    def call(self, X: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        self.check_input(X.shape)
        Y = tf.nn.relu(self.bn1(self.conv1(X), training=training))
        Y = self.bn2(self.conv2(Y), training=training)
        if self.conv3 is not None:
            X = self.conv3(X)
        return tf.nn.relu(Y + X)


@serializable
class ResNeXtBlock(Block):
    __doc__ = CLASS_DOCS["ResNeXtBlock"]

    def __init__(
        self,
        num_channels: int,
        groups: int,
        bot_mul: float,
        use_1x1conv: bool = False,
        strides: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(specs.resnext(num_channels, groups, bot_mul, use_1x1conv, strides), **kwargs)

    def call(self, X: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        self.check_input(X.shape)
        Y = tf.nn.relu(self.bn1(self.conv1(X), training=training))
        Y = tf.nn.relu(self.bn2(self.conv2(Y), training=training))
        Y = self.bn3(self.conv3(Y), training=training)
        if self.conv4 is not None:
            X = self.bn4(self.conv4(X), training=training)
        return tf.nn.relu(Y + X)


@serializable
class BasicBlock(Block):
    __doc__ = CLASS_DOCS["BasicBlock"]

    def __init__(self, num_channels: int, use_1x1conv: bool = False, strides: int = 1, **kwargs: Any) -> None:
        super().__init__(specs.basic(num_channels, use_1x1conv, strides), **kwargs)

    def call(self, X: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        self.check_input(X.shape)
        Y = tf.nn.relu(self.bn1(self.conv1(X), training=training))
        Y = self.bn2(self.conv2(Y), training=training)
        if self.downsample is not None:
            X = self.downsample(X, training=training)
        return tf.nn.relu(Y + X)


@serializable
class Bottleneck(Block):
    __doc__ = CLASS_DOCS["Bottleneck"]

    def __init__(
        self,
        planes: int,
        use_1x1conv: bool = False,
        strides: int = 1,
        groups: int = 1,
        base_width: int = 64,
        stride_in_1x1: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(specs.bottleneck(planes, use_1x1conv, strides, groups, base_width, stride_in_1x1), **kwargs)

    def call(self, X: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        self.check_input(X.shape)
        Y = tf.nn.relu(self.bn1(self.conv1(X), training=training))
        Y = tf.nn.relu(self.bn2(self.conv2(Y), training=training))
        Y = self.bn3(self.conv3(Y), training=training)
        if self.downsample is not None:
            X = self.downsample(X, training=training)
        return tf.nn.relu(Y + X)


@serializable
class PreActBasic(Block):
    __doc__ = CLASS_DOCS["PreActBasic"]

    def __init__(self, num_channels: int, use_1x1conv: bool = False, strides: int = 1, **kwargs: Any) -> None:
        super().__init__(specs.basic(num_channels, use_1x1conv, strides, preact=True), **kwargs)

    def call(self, X: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        self.check_input(X.shape)
        Y = tf.nn.relu(self.bn1(X, training=training))
        if self.downsample is not None:
            X = self.downsample(Y, training=training)  # the projection reads the pre-activated input
        Y = self.conv1(Y)
        Y = self.conv2(tf.nn.relu(self.bn2(Y, training=training)))
        return Y + X


@serializable
class PreActBottleneck(Block):
    __doc__ = CLASS_DOCS["PreActBottleneck"]

    def __init__(
        self,
        planes: int,
        use_1x1conv: bool = False,
        strides: int = 1,
        groups: int = 1,
        base_width: int = 64,
        stride_in_1x1: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            specs.bottleneck(planes, use_1x1conv, strides, groups, base_width, stride_in_1x1, preact=True), **kwargs
        )

    def call(self, X: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        self.check_input(X.shape)
        Y = tf.nn.relu(self.bn1(X, training=training))
        if self.downsample is not None:
            X = self.downsample(Y, training=training)  # the projection reads the pre-activated input
        Y = self.conv1(Y)
        Y = self.conv2(tf.nn.relu(self.bn2(Y, training=training)))
        Y = self.conv3(tf.nn.relu(self.bn3(Y, training=training)))
        return Y + X
