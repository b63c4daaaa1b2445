"""The chapter's residual and ResNeXt blocks and the family's blocks as Keras layers (NHWC).

The blocks are ``keras.layers.Layer``s, as Keras advises for a piece nested inside a network (the network is a
``keras.Model``, ``resnet.backends.tensorflow.models``): a block still works on its own (every hook takes a
Layer), without the training machinery a Model would carry into each stage. Unlike the book's code, every
``call`` takes ``training`` and hands it to BatchNorm: under Keras 3 the book's models train with BatchNorm in
inference mode.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf  # before keras, as in resnet.backends.tensorflow.layers

import keras  # isort: skip

from resnet import specs
from resnet.backends.tensorflow.layers import Shortcut, make_layer
from resnet.docs import CLASS_DOCS
from resnet.specs import BlockSpec
from resnet.walk import attach_layers

__all__ = ["BasicBlock", "Bottleneck", "PreActBasic", "PreActBottleneck", "ResNeXtBlock", "Residual"]


class Block(keras.layers.Layer):
    """What every block shares: its description ``spec``, its layers, named as the description names them, in
    the block's dtype policy, and the check of its input."""

    def __init__(self, spec: BlockSpec, **kwargs: Any) -> None:
        super().__init__(**kwargs)  # sets the dtype policy, which every layer of the block takes
        self.spec = spec
        attach_layers(
            self,
            spec,
            lambda layer: make_layer(layer, self.dtype_policy),
            lambda conv_spec, batch_norm: Shortcut(conv_spec, batch_norm, dtype=self.dtype_policy),
        )

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        self.check_input(input_shape)  # the layers themselves are built at their first call

    def check_input(self, input_shape: tuple[int | None, ...]) -> None:
        """The identity shortcut needs the input to have the output's shape: a clear error, not a broadcast one.

        Blocks check in ``build`` (the first call), where Keras passes errors on unchanged, and in every call,
        where it prefixes them with the call's arguments."""
        specs.check_block_input(self.spec, input_shape[-1])


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
