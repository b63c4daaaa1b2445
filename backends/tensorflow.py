"""The chapter's models as Keras 3 layers and models on TensorFlow (NHWC), and the hooks the common API calls.

The four backend modules read side by side: the same names in the same order with the same docstrings,
so that a diff between two of them shows only what differs between the frameworks.

The blocks are ``keras.layers.Layer``s and the network a ``keras.Model``, as Keras advises: a Layer for a
piece nested inside a network, a Model for the outer object that is trained and saved. A block still works
on its own (every hook below takes a Layer), without the training machinery a Model would carry into each
stage. Unlike the book's code, every ``call`` takes ``training`` and hands it to BatchNorm: under Keras 3 the
book's models train with BatchNorm in inference mode.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import numpy as np
import tensorflow as tf  # before keras: where TensorFlow is missing or broken, its own error is the one reported

import keras  # Keras 3, the same as tf.keras; imported after TensorFlow on purpose (isort: skip)

from resnet import specs
from resnet.specs import BatchNormSpec, BlockSpec, ConvSpec, DenseSpec, LayerSpec, ModelSpec

if keras.backend.backend() != "tensorflow":
    raise ImportError(
        f"the tensorflow backend needs Keras running on TensorFlow, but Keras is set to {keras.backend.backend()!r} "
        "(KERAS_BACKEND or ~/.keras/keras.json); set KERAS_BACKEND=tensorflow"
    )

NAME = "tensorflow"
LAYOUT = "NHWC"

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "PreActBasic",
    "PreActBottleneck",
    "ResNeXtBlock",
    "ResNet",
    "ResNet18",
    "Residual",
    *specs.FAMILY,
]


# ---------------------------------------------------------------------------------------------- layers


def _spatial_padding(padding: int) -> list[list[int]]:
    """NHWC paddings for ``tf.pad`` / ``tf.nn.max_pool2d``: symmetric on height and width only."""
    return [[0, 0], [padding, padding], [padding, padding], [0, 0]]


class Conv2d(keras.layers.Layer):
    """A convolution with explicit symmetric zero padding and groups, on ``tf.nn.conv2d``.

    Keras' own ``Conv2D`` pads only ``'valid'`` or ``'same'`` (asymmetric at stride 2: other numbers from the same
    weights) and runs grouped convolutions through XLA, about 100x slower on CPU. ``tf.nn.conv2d``
    takes a grouped kernel (HWIO, I = input channels // groups) directly on its fast oneDNN path. At stride 1
    the symmetric padding is TensorFlow's 'SAME'; otherwise the input is padded with ``tf.pad`` and convolved
    VALID (given explicit paddings instead, the CPU kernel has no gradient for grouped convolutions).
    Initialised as Keras' ``Conv2D``: Glorot-uniform kernel, zero bias.
    """

    def __init__(self, spec: ConvSpec, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spec = spec
        self.bias = None

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        c = self.spec
        self.kernel = self.add_weight(
            name="kernel", shape=(c.kernel, c.kernel, input_shape[-1] // c.groups, c.out_channels),
            initializer="glorot_uniform",
        )
        if c.bias:
            self.bias = self.add_weight(name="bias", shape=(c.out_channels,), initializer="zeros")

    def call(self, x: tf.Tensor) -> tf.Tensor:
        c = self.spec
        if c.stride == 1 and 2 * c.padding == c.kernel - 1:
            # At stride 1, 'SAME' is exactly this symmetric padding, and its backward pass skips tf.pad's.
            y = tf.nn.conv2d(x, self.kernel, 1, "SAME")
        else:
            y = tf.nn.conv2d(tf.pad(x, _spatial_padding(c.padding)) if c.padding else x, self.kernel, c.stride, "VALID")
        return y if self.bias is None else tf.nn.bias_add(y, self.bias)


class MaxPool2d(keras.layers.Layer):
    """Max pooling with explicit symmetric padding, where padded cells never win (Keras' pads only 'same')."""

    def __init__(self, kernel: int, stride: int, padding: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.kernel, self.stride, self.padding = kernel, stride, padding

    def call(self, x: tf.Tensor) -> tf.Tensor:
        # Padded cells are minus infinity, so they never win. (Padding with tf.pad and pooling VALID: the
        # backward pass of max pooling with explicit paddings is slower: ResNet-18 trains 5% faster this way.)
        x = tf.pad(x, _spatial_padding(self.padding), constant_values=float("-inf"))
        return tf.nn.max_pool2d(x, self.kernel, self.stride, "VALID")


class BatchNorm(keras.layers.BatchNormalization):
    """Keras' ``BatchNormalization`` (the same weights, arguments and running-average updates), computed with
    TensorFlow's fused kernel (``FusedBatchNormV3``, oneDNN on a CPU) for 4-D channels-last float32 inputs.

    Keras 3 normalizes with separate operations; the fused kernel's forward and backward passes are 1.7-4x
    faster on a 2-core CPU (4x48x48x64: 2.7 against 1.5 ms; 128x24x24x64: 25 against 6 ms). Anything else (a
    mask, float64, another axis, renorm, no scale or no center) goes through Keras' own ``call``.
    """

    def _fused(self, inputs: tf.Tensor, mask: Any) -> bool:
        return (
            mask is None
            and inputs.shape.rank == 4
            and self.axis in (-1, 3)
            and inputs.dtype == tf.float32
            and self.scale
            and self.center
            and not self.renorm
            and not self.synchronized
        )

    def call(self, inputs: tf.Tensor, training: bool | None = None, mask: Any = None) -> tf.Tensor:
        if not self._fused(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        in_training = bool(training) and self.trainable
        empty = tf.constant([], tf.float32)
        # The raw op, not tf.compat.v1.nn.fused_batch_norm, which raises epsilon to at least 1.001e-5 (cuDNN's
        # floor) and would change the numbers at this package's 1e-5.
        y, mean, variance, *_ = tf.raw_ops.FusedBatchNormV3(
            x=inputs,
            scale=self.gamma,
            offset=self.beta,
            mean=empty if in_training else self.moving_mean,
            variance=empty if in_training else self.moving_variance,
            epsilon=self.epsilon,
            exponential_avg_factor=1.0,
            data_format="NHWC",
            is_training=in_training,
        )
        if in_training:
            # The kernel normalizes with the biased batch variance but returns the unbiased one; the running
            # average takes the biased one, as Keras' does.
            count = tf.cast(tf.size(inputs) // tf.shape(inputs)[-1], tf.float32)
            variance = variance * ((count - 1.0) / count)
            self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
            self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
        return y


class Sequential(keras.Sequential):
    """``keras.Sequential`` that can also be indexed (``stage[0]``) and measured (``len``), like PyTorch's, and
    that takes a ``dtype`` as other layers do (Keras' own casts its inputs to float32 whatever its layers')."""

    def __init__(self, layers: Sequence[keras.layers.Layer], dtype: Any = None, **kwargs: Any) -> None:
        super().__init__(layers, **kwargs)
        if dtype is not None:
            self.dtype_policy = dtype

    def __getitem__(self, index: int) -> keras.layers.Layer:
        return self.layers[index]

    def __len__(self) -> int:
        return len(self.layers)


def make_layer(layer: LayerSpec, dtype: Any = None) -> keras.layers.Layer:
    """The native layer for a layer description, its input size inferred at the first call (``dtype``: Keras'
    dtype policy; every layer of a model needs its model's, as Keras casts each layer's inputs to its own)."""
    if isinstance(layer, ConvSpec):
        return Conv2d(layer, dtype=dtype)
    if isinstance(layer, BatchNormSpec):
        # Keras' momentum is the weight of the old running value; its running variance averages the biased
        # batch variance, the canonical rule.
        return BatchNorm(
            momentum=1 - specs.BN_MOMENTUM, epsilon=specs.BN_EPSILON, dtype=dtype
        )
    if isinstance(layer, DenseSpec):
        return keras.layers.Dense(layer.out_features, dtype=dtype)
    raise TypeError(f"unknown layer description {layer!r}")


class Shortcut(keras.layers.Layer):
    """A projection shortcut, ``downsample`` in the family's blocks: a 1x1 convolution ``conv`` with the block's
    stride, then BN ``bn`` (none in a pre-activation block)."""

    def __init__(self, conv_spec: ConvSpec, batch_norm: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.conv = make_layer(conv_spec, self.dtype_policy)
        self.bn = make_layer(BatchNormSpec(), self.dtype_policy) if batch_norm else None

    def call(self, X: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        X = self.conv(X)
        return X if self.bn is None else self.bn(X, training=training)


def _add_layers(module: keras.layers.Layer, spec: BlockSpec) -> None:
    """Create a block's layers as attributes named as in the description (conv1, bn1, ...); the layers of a
    projection shortcut, ``downsample.conv`` and ``downsample.bn``, go into a ``Shortcut`` named ``downsample``."""
    layers, dtype = spec.layers(), module.dtype_policy
    for name, layer in layers.items():
        if not name.startswith("downsample."):
            setattr(module, name, make_layer(layer, dtype))
    if "downsample.conv" in layers:
        module.downsample = Shortcut(layers["downsample.conv"], "downsample.bn" in layers, dtype=dtype)


def _check_input(module: keras.layers.Layer, input_shape: tuple[int | None, ...]) -> None:
    # The identity shortcut needs the input to have the output's shape; say so instead of a broadcast error.
    # Blocks check in build (the first call), where Keras passes errors on unchanged, and in every call, where
    # it prefixes them with the call's arguments.
    if not module.spec.use_1x1conv:
        specs.check_block_input(module.spec, input_shape[-1])


# ---------------------------------------------------------------------------------------------- blocks


class Residual(keras.layers.Layer):
    """The residual block of ResNet: 3x3 conv, BN, ReLU, 3x3 conv, BN, plus the shortcut, then ReLU.

    Args:
        num_channels: output channels of both 3x3 convolutions.
        use_1x1conv: put a 1x1 convolution on the shortcut, to change channels or resolution.
        strides: stride of the first 3x3 convolution (and of the 1x1 shortcut), 1 or 2.
    """

    def __init__(self, num_channels: int, use_1x1conv: bool = False, strides: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spec = specs.residual(num_channels, use_1x1conv, strides)
        _add_layers(self, self.spec)
        if not self.spec.use_1x1conv:
            self.conv3 = None

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        _check_input(self, input_shape)  # the layers themselves are built at their first call

    def call(self, X: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        _check_input(self, X.shape)
        Y = tf.nn.relu(self.bn1(self.conv1(X), training=training))
        Y = self.bn2(self.conv2(Y), training=training)
        if self.conv3 is not None:
            X = self.conv3(X)
        return tf.nn.relu(Y + X)


class ResNeXtBlock(keras.layers.Layer):
    """The ResNeXt block: 1x1 conv, grouped 3x3 conv, 1x1 conv (each with BN), plus the shortcut, then ReLU.

    Args:
        num_channels: output channels.
        groups: the number of groups (cardinality) of the 3x3 convolution, as in the chapter's text and the
            ResNeXt paper; each group has ``round(num_channels * bot_mul) // groups`` channels. The book's
            code passes ``bot_channels // groups`` to the convolution, so there ``groups`` is the width of
            each group: the book's ``ResNeXtBlock(32, 16, 1)`` (2 groups of 16) is ``ResNeXtBlock(32, 2, 1)``.
        bot_mul: bottleneck width as a multiple of ``num_channels``.
        use_1x1conv: put a 1x1 convolution and BN on the shortcut.
        strides: stride of the 3x3 convolution (and of the shortcut), 1 or 2.
    """

    def __init__(
        self,
        num_channels: int,
        groups: int,
        bot_mul: float,
        use_1x1conv: bool = False,
        strides: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.spec = specs.resnext(num_channels, groups, bot_mul, use_1x1conv, strides)
        _add_layers(self, self.spec)
        if not self.spec.use_1x1conv:
            self.conv4 = self.bn4 = None

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        _check_input(self, input_shape)  # the layers themselves are built at their first call

    def call(self, X: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        _check_input(self, X.shape)
        Y = tf.nn.relu(self.bn1(self.conv1(X), training=training))
        Y = tf.nn.relu(self.bn2(self.conv2(Y), training=training))
        Y = self.bn3(self.conv3(Y), training=training)
        if self.conv4 is not None:
            X = self.bn4(self.conv4(X), training=training)
        return tf.nn.relu(Y + X)


class BasicBlock(keras.layers.Layer):
    """The basic block of ResNet-18 and -34 in torchvision's convention: 3x3 conv, BN, ReLU, 3x3 conv, BN, plus
    the shortcut, then ReLU. Unlike the chapter's ``Residual``: no convolution biases, and the projection
    shortcut ``downsample`` is a 1x1 convolution followed by BN.

    Args:
        num_channels: output channels of both 3x3 convolutions.
        use_1x1conv: a projection shortcut (1x1 convolution and BN), to change channels or resolution.
        strides: stride of the first 3x3 convolution (and of the shortcut), 1 or 2.
    """

    def __init__(self, num_channels: int, use_1x1conv: bool = False, strides: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spec = specs.basic(num_channels, use_1x1conv, strides)
        _add_layers(self, self.spec)
        if not self.spec.use_1x1conv:
            self.downsample = None

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        _check_input(self, input_shape)  # the layers themselves are built at their first call

    def call(self, X: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        _check_input(self, X.shape)
        Y = tf.nn.relu(self.bn1(self.conv1(X), training=training))
        Y = self.bn2(self.conv2(Y), training=training)
        if self.downsample is not None:
            X = self.downsample(X, training=training)
        return tf.nn.relu(Y + X)


class Bottleneck(keras.layers.Layer):
    """The bottleneck block of ResNet-50/101/152 and ResNeXt in torchvision's convention: 1x1 conv, BN, ReLU,
    3x3 conv (grouped for ResNeXt), BN, ReLU, 1x1 conv, BN, plus the shortcut, then ReLU. No convolution
    biases; the projection shortcut ``downsample`` is a 1x1 convolution followed by BN.

    Args:
        planes: the output has ``4 * planes`` channels; the inner convolutions ``int(planes * base_width / 64)
            * groups`` (torchvision's rule).
        use_1x1conv: a projection shortcut (1x1 convolution and BN), to change channels or resolution.
        strides: stride of the 3x3 convolution (torchvision's "ResNet v1.5") and of the shortcut, 1 or 2.
        groups: the number of groups (cardinality) of the 3x3 convolution: 32 for ResNeXt.
        base_width: channels per group at ``planes=64`` (torchvision's ``width_per_group``): 4 for ResNeXt-50 32x4d.
        stride_in_1x1: put the stride on the first 1x1 convolution instead, as the ResNet paper does.
    """

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
        super().__init__(**kwargs)
        self.spec = specs.bottleneck(planes, use_1x1conv, strides, groups, base_width, stride_in_1x1)
        _add_layers(self, self.spec)
        if not self.spec.use_1x1conv:
            self.downsample = None

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        _check_input(self, input_shape)  # the layers themselves are built at their first call

    def call(self, X: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        _check_input(self, X.shape)
        Y = tf.nn.relu(self.bn1(self.conv1(X), training=training))
        Y = tf.nn.relu(self.bn2(self.conv2(Y), training=training))
        Y = self.bn3(self.conv3(Y), training=training)
        if self.downsample is not None:
            X = self.downsample(X, training=training)
        return tf.nn.relu(Y + X)


class PreActBasic(keras.layers.Layer):
    """The pre-activation basic block of ResNet v2 (He et al. 2016, "Identity Mappings"): BN, ReLU, 3x3 conv,
    BN, ReLU, 3x3 conv, plus the shortcut, with nothing after the addition. The projection shortcut
    ``downsample`` is a bare 1x1 convolution on the pre-activated input; no convolution biases.

    Args:
        num_channels: output channels of both 3x3 convolutions.
        use_1x1conv: a projection shortcut (1x1 convolution), to change channels or resolution.
        strides: stride of the first 3x3 convolution (and of the shortcut), 1 or 2.
    """

    def __init__(self, num_channels: int, use_1x1conv: bool = False, strides: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spec = specs.basic(num_channels, use_1x1conv, strides, preact=True)
        _add_layers(self, self.spec)
        if not self.spec.use_1x1conv:
            self.downsample = None

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        _check_input(self, input_shape)  # the layers themselves are built at their first call

    def call(self, X: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        _check_input(self, X.shape)
        Y = tf.nn.relu(self.bn1(X, training=training))
        if self.downsample is not None:
            X = self.downsample(Y, training=training)  # the projection reads the pre-activated input
        Y = self.conv1(Y)
        Y = self.conv2(tf.nn.relu(self.bn2(Y, training=training)))
        return Y + X


class PreActBottleneck(keras.layers.Layer):
    """The pre-activation bottleneck block of ResNet v2: BN, ReLU, 1x1 conv, BN, ReLU, 3x3 conv, BN, ReLU, 1x1
    conv, plus the shortcut, with nothing after the addition. The projection shortcut ``downsample`` is a bare
    1x1 convolution on the pre-activated input; no convolution biases.

    Args:
        planes: the output has ``4 * planes`` channels; the inner convolutions ``int(planes * base_width / 64)
            * groups`` (torchvision's rule).
        use_1x1conv: a projection shortcut (1x1 convolution), to change channels or resolution.
        strides: stride of the 3x3 convolution (and of the shortcut), 1 or 2.
        groups: the number of groups (cardinality) of the 3x3 convolution.
        base_width: channels per group at ``planes=64`` (torchvision's ``width_per_group``).
        stride_in_1x1: put the stride on the first 1x1 convolution instead, as the ResNet paper does.
    """

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
        super().__init__(**kwargs)
        self.spec = specs.bottleneck(planes, use_1x1conv, strides, groups, base_width, stride_in_1x1, preact=True)
        _add_layers(self, self.spec)
        if not self.spec.use_1x1conv:
            self.downsample = None

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        _check_input(self, input_shape)  # the layers themselves are built at their first call

    def call(self, X: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        _check_input(self, X.shape)
        Y = tf.nn.relu(self.bn1(X, training=training))
        if self.downsample is not None:
            X = self.downsample(Y, training=training)  # the projection reads the pre-activated input
        Y = self.conv1(Y)
        Y = self.conv2(tf.nn.relu(self.bn2(Y, training=training)))
        Y = self.conv3(tf.nn.relu(self.bn3(Y, training=training)))
        return Y + X


# ---------------------------------------------------------------------------------------------- models


def make_block(spec: BlockSpec, dtype: Any = None) -> keras.layers.Layer:
    """The native block for a block description (``dtype``: Keras' dtype policy)."""
    if isinstance(spec, specs.ResidualSpec):
        return Residual(spec.num_channels, spec.use_1x1conv, spec.strides, dtype=dtype)
    if isinstance(spec, specs.ResNeXtSpec):
        return ResNeXtBlock(spec.num_channels, spec.groups, spec.bot_mul, spec.use_1x1conv, spec.strides, dtype=dtype)
    if isinstance(spec, specs.BasicSpec):
        cls = PreActBasic if spec.preact else BasicBlock
        return cls(spec.num_channels, spec.use_1x1conv, spec.strides, dtype=dtype)
    return (PreActBottleneck if spec.preact else Bottleneck)(
        spec.planes, spec.use_1x1conv, spec.strides, spec.groups, spec.base_width, spec.stride_in_1x1, dtype=dtype
    )


class ResNet(keras.Model):
    """The chapter's ResNet: the stem ``b1``, one stage per ``arch`` entry (``b2``, ``b3``...), the head ``last``.

    Args:
        arch: one ``(num_residuals, num_channels)`` pair per stage, e.g. ``((2, 64), (2, 128), (2, 256),
            (2, 512))`` for ResNet-18.
        num_classes: outputs of the final dense layer.
        spec: instead of ``arch`` and ``num_classes``, any model description (``resnet.specs.ModelSpec``), as
            the family's builders (``resnet50()``...) pass: the same parts, from its stem, stages and head.
        dtype: ``"float32"`` (the default) or ``"float64"``, the precision of the weights and the computation.
    """

    def __init__(
        self,
        arch: Sequence[Sequence[int]] | None = None,
        num_classes: int = 10,
        *,
        spec: ModelSpec | None = None,
        dtype: str = "float32",
        **kwargs: Any,
    ) -> None:
        super().__init__(dtype=specs.check_dtype(dtype), **kwargs)
        self.spec = specs.model_spec(arch, num_classes, spec)
        # The parts in the order of spec.part_names: b1, the stages, last (the hooks below rely on it).
        parts = [self.b1()]
        for _, blocks in self.spec.stages:  # the book's self.block(...) for the book's arch
            parts.append(Sequential([make_block(b, self.dtype_policy) for b in blocks], dtype=self.dtype_policy))
        parts.append(self.head())
        self.net = Sequential(parts, dtype=self.dtype_policy)

    def b1(self) -> Sequential:
        """The stem: 7x7 convolution with stride 2, BN, ReLU, 3x3 max pooling with stride 2."""
        layers, pool, dtype = self.spec.stem.layers(), self.spec.stem.pool, self.dtype_policy
        return Sequential(
            [
                make_layer(layers["conv"], dtype),
                make_layer(layers["bn"], dtype),
                keras.layers.ReLU(dtype=dtype),
                MaxPool2d(pool.kernel, pool.stride, pool.padding, dtype=dtype),
            ],
            dtype=dtype,
        )

    def block(self, num_residuals: int, num_channels: int, first_block: bool = False) -> Sequential:
        """A stage of ``num_residuals`` blocks; all but the first stage start by halving height and width."""
        stage = specs.book_stage(num_residuals, num_channels, first_block)
        return Sequential([make_block(b, self.dtype_policy) for b in stage], dtype=self.dtype_policy)

    def head(self) -> Sequential:
        """The head: global average pooling and a dense layer to the classes (after BN and ReLU in ResNet v2)."""
        layers, dtype = self.spec.head.layers(), self.dtype_policy
        preact = [make_layer(layers["bn"], dtype), keras.layers.ReLU(dtype=dtype)] if "bn" in layers else []
        pool = keras.layers.GlobalAveragePooling2D(dtype=dtype)
        return Sequential([*preact, pool, make_layer(layers["fc"], dtype)], dtype=dtype)

    def call(self, X: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        specs.check_model_input(self.spec, X.shape[-1])
        return self.net(X, training=training)


class ResNet18(ResNet):
    """The book's ResNet-18: four stages of two residual blocks, 64 to 512 channels."""

    def __init__(self, num_classes: int = 10, *, dtype: str = "float32", **kwargs: Any) -> None:
        super().__init__(specs.RESNET18_ARCH, num_classes, dtype=dtype, **kwargs)


# The ResNet family of the chapter's exercises, in torchvision's convention (see resnet.specs.FAMILY).
resnet18 = specs.FAMILY["resnet18"].builder(ResNet)
resnet34 = specs.FAMILY["resnet34"].builder(ResNet)
resnet50 = specs.FAMILY["resnet50"].builder(ResNet)
resnet101 = specs.FAMILY["resnet101"].builder(ResNet)
resnet152 = specs.FAMILY["resnet152"].builder(ResNet)
preact_resnet18 = specs.FAMILY["preact_resnet18"].builder(ResNet)
preact_resnet34 = specs.FAMILY["preact_resnet34"].builder(ResNet)
preact_resnet50 = specs.FAMILY["preact_resnet50"].builder(ResNet)
preact_resnet101 = specs.FAMILY["preact_resnet101"].builder(ResNet)
preact_resnet152 = specs.FAMILY["preact_resnet152"].builder(ResNet)
resnext50_32x4d = specs.FAMILY["resnext50_32x4d"].builder(ResNet)
resnext101_32x8d = specs.FAMILY["resnext101_32x8d"].builder(ResNet)


# ------------------------------------------------------------------------------- common-API hooks


def is_native_model(obj: Any) -> bool:
    """True if ``obj`` is a block or model of this backend."""
    return isinstance(obj, (Residual, ResNeXtBlock, BasicBlock, Bottleneck, PreActBasic, PreActBottleneck, ResNet))


def spec_of(model: Any) -> BlockSpec | ModelSpec:
    """The architecture description the model was built from."""
    return model.spec


def dtype_of(model: keras.layers.Layer) -> str:
    """The precision of the model's weights, ``"float32"`` or ``"float64"`` (Keras' ``dtype`` argument)."""
    return model.dtype_policy.variable_dtype


def device_of(model: keras.layers.Layer) -> str:
    """Where the model's weights are: ``"cpu:0"``, or ``"gpu:0"`` with a GPU build of TensorFlow."""
    if not model.weights:
        return "gpu:0" if tf.config.list_logical_devices("GPU") else "cpu:0"
    device = tf.DeviceSpec.from_string(model.weights[0].value.device)
    return f"{device.device_type.lower()}:{device.device_index or 0}"


def to_accelerator(model: keras.layers.Layer) -> str:
    """TensorFlow places weights and operations on a GPU by itself when its build has one; this project
    installs tensorflow-cpu, so nothing moves. Returns ``device_of(model)``."""
    return device_of(model)


def to_native(x: np.ndarray, dtype: str = "float32") -> tf.Tensor:
    """An NCHW NumPy array as a native tensor of ``dtype`` (NHWC: transposed; 2-D arrays unchanged)."""
    x = np.asarray(x, dtype=dtype)
    return tf.constant(np.transpose(x, (0, 2, 3, 1)) if x.ndim == 4 else x)


def to_numpy(y: tf.Tensor) -> np.ndarray:
    """A native tensor as a NumPy array in NCHW order."""
    y = np.asarray(y)
    return np.ascontiguousarray(np.transpose(y, (0, 3, 1, 2))) if y.ndim == 4 else y


def _named_layers(model: keras.layers.Layer) -> dict[str, keras.layers.Layer]:
    """Canonical layer name -> native layer with weights, walked through our own attributes in the
    description's order (never through Keras' generated names): ``conv1``, or ``b2.0.conv1`` in a ResNet."""
    if not isinstance(model, ResNet):  # a dotted name (downsample.conv) is an attribute of an attribute
        return {name: functools.reduce(getattr, name.split("."), model) for name in model.spec.layers()}
    spec, (stem, *stages, head) = model.spec, model.net.layers
    layers = dict(zip((f"b1.{name}" for name in spec.stem.layers()), stem.layers))  # conv, bn: the first two
    for (stage_name, _), stage in zip(spec.stages, stages):
        for index, block in enumerate(stage.layers):
            layers.update({f"{stage_name}.{index}.{name}": layer for name, layer in _named_layers(block).items()})
    if spec.head.preact:
        layers["last.bn"] = head.layers[0]
    layers["last.fc"] = head.layers[-1]
    return layers


def is_built(model: keras.layers.Layer) -> bool:
    """True once every lazy layer knows its input size and has its weights."""
    return all(layer.built for layer in _named_layers(model).values())


def build(model: keras.layers.Layer, input_shape: tuple[int, ...]) -> None:
    """Create the weights of a model's lazy layers for an NCHW input shape (a no-op once built)."""
    if not is_built(model):
        apply(model, to_native(np.zeros(input_shape), dtype_of(model)), training=False)


def apply(model: keras.layers.Layer, x: tf.Tensor, training: bool) -> tf.Tensor:
    """Run the model; in training mode BatchNorm uses batch statistics and updates its running averages."""
    return model(x, training=training)


def part_outputs(model: keras.layers.Layer, x: tf.Tensor) -> list[tuple[str, tf.Tensor]]:
    """(name, output) of each top-level part of a ResNet in inference mode; one entry for a block."""
    if not isinstance(model, ResNet):
        return [(type(model).__name__, apply(model, x, training=False))]
    outputs = []
    for name, part in zip(model.spec.part_names, model.net.layers):
        x = apply(part, x, training=False)
        outputs.append((name, x))
    return outputs


def trainable_count(model: keras.layers.Layer) -> int:
    """Number of trainable parameters (BatchNorm running statistics are non-trainable weights in Keras)."""
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


# The attribute of each Keras layer that holds a canonical tensor, by the tensor's canonical suffix.
_KERAS_NAMES = {
    Conv2d: {"weight": "kernel", "bias": "bias"},
    keras.layers.Dense: {"weight": "kernel", "bias": "bias"},
    BatchNorm: {
        "weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"
    },
}


def _native_items(model: keras.layers.Layer) -> dict[str, keras.Variable]:
    """Canonical name -> native variable, walked through the layers named by the description."""
    items = {}
    for prefix, layer in _named_layers(model).items():
        for suffix, attribute in _KERAS_NAMES[type(layer)].items():
            variable = getattr(layer, attribute)
            if variable is not None:  # a convolution without bias
                items[f"{prefix}.{suffix}"] = variable
    return items


def _to_canonical(value: np.ndarray) -> np.ndarray:
    """Native layout -> canonical: HWIO kernels to OIHW, (in, out) dense weights to (out, in)."""
    value = np.asarray(value)
    if value.ndim == 4:
        return np.ascontiguousarray(value.transpose(3, 2, 0, 1))
    return np.ascontiguousarray(value.T) if value.ndim == 2 else value.copy()


def _from_canonical(value: np.ndarray) -> np.ndarray:
    """Canonical layout -> native: OIHW kernels to HWIO, (out, in) dense weights to (in, out)."""
    value = np.asarray(value)
    if value.ndim == 4:
        return value.transpose(2, 3, 1, 0)
    return value.T if value.ndim == 2 else value


def get_arrays(model: keras.layers.Layer) -> dict[str, np.ndarray]:
    """Every weight and BatchNorm statistic as canonical name -> array in canonical layout, in the model's
    precision."""
    return {name: _to_canonical(variable.numpy()) for name, variable in _native_items(model).items()}


def set_arrays(model: keras.layers.Layer, arrays: dict[str, np.ndarray]) -> None:
    """Assign canonical arrays (already checked against ``get_arrays``) to the model's tensors, in the model's
    precision."""
    native = _native_items(model)
    for name, value in arrays.items():
        native[name].assign(_from_canonical(value).astype(native[name].dtype))


def _trainable_items(model: keras.layers.Layer) -> dict[str, keras.Variable]:
    """The trainable entries of ``_native_items`` (BatchNorm running statistics excluded)."""
    return {name: variable for name, variable in _native_items(model).items() if variable.trainable}


def _native_grads(model: keras.layers.Layer, grads: Sequence[tf.Tensor | None]) -> dict[str, np.ndarray]:
    """Canonical name -> gradient of each trainable tensor, in canonical layout (``grads``: the tape's
    gradients, in the order of ``_trainable_items``)."""
    return {
        name: _to_canonical(np.zeros(variable.shape, variable.dtype) if grad is None else grad)
        for (name, variable), grad in zip(_trainable_items(model).items(), grads)
    }


def vjp(model: keras.layers.Layer, x: np.ndarray, output_grad: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Training-mode output for an NCHW batch and the gradients of ``sum(output * output_grad)``.

    Gradients come back by canonical name in canonical layout. BatchNorm updates its running averages as
    in a training step.
    """
    build(model, x.shape)
    variables, dtype = list(_trainable_items(model).values()), dtype_of(model)
    with tf.GradientTape() as tape:
        y = apply(model, to_native(x, dtype), training=True)
    grads = tape.gradient(y, variables, output_gradients=to_native(output_grad, dtype))
    return to_numpy(y), _native_grads(model, grads)


def make_train_step(
    model: keras.layers.Layer, lr: float, compile: bool = False, mixed_precision: bool = False
) -> Callable[..., float | Callable[[], float]]:
    """A function taking one plain SGD step (the book's optimizer) on the mean softmax cross-entropy of an
    NCHW batch and its integer labels, with BatchNorm in training mode; it returns the loss. With
    ``wait=False`` it returns at once a function that waits for the step and gives its loss, so that a loop
    can prepare the next batch while the framework computes (what ``resnet.training.fit`` does).

    ``compile`` and ``mixed_precision`` are accepted so that every backend takes the same call; this backend's
    step is always compiled, and mixed precision is for the GPU backends (``resnet.specs.MIXED_PRECISION_BACKENDS``).
    """
    dtype = specs.check_mixed_precision(dtype_of(model), mixed_precision, NAME)
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


def make_predict(model: keras.layers.Layer, mixed_precision: bool = False) -> Callable[[np.ndarray], np.ndarray]:
    """A function returning the model's inference-mode outputs (NumPy, in the model's precision) for an NCHW
    NumPy batch; ``mixed_precision`` as in ``make_train_step``."""

    # Compiled like the training step (TensorFlow's fast path), one shape-generic trace for a smaller last batch.
    @tf.function(reduce_retracing=True)
    def compiled_predict(x: tf.Tensor) -> tf.Tensor:
        return model(x, training=False)

    dtype = specs.check_mixed_precision(dtype_of(model), mixed_precision, NAME)

    def predict(x: np.ndarray) -> np.ndarray:
        build(model, x.shape)  # create the weights outside the compiled function
        return to_numpy(compiled_predict(to_native(x, dtype)))

    return predict
