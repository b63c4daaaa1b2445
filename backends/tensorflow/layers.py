"""Keras layers from layer descriptions, on TensorFlow's fast kernels: a convolution with symmetric padding and
groups, max pooling that pads with minus infinity, the fused BatchNorm, and an indexable ``Sequential``; their
input sizes are inferred at the first call, as Keras layers do."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

import tensorflow as tf  # before keras: where TensorFlow is missing or broken, its own error is the one reported

import keras  # Keras 3, the same as tf.keras; imported after TensorFlow on purpose (isort: skip)

from resnet import specs
from resnet.contract import check_batch_norm_batch
from resnet.specs import BatchNormSpec, ConvSpec, DenseSpec, LayerSpec

if keras.backend.backend() != "tensorflow":
    raise ImportError(
        f"the tensorflow backend needs Keras running on TensorFlow, but Keras is set to {keras.backend.backend()!r} "
        "(KERAS_BACKEND or ~/.keras/keras.json); set KERAS_BACKEND=tensorflow"
    )

__all__ = ["BatchNorm", "Conv2d", "MaxPool2d", "Sequential", "Shortcut", "check_policy", "make_layer"]

#: Registers a class for ``keras.saving`` under ``resnet>ClassName``, so that ``keras.models.load_model`` finds
#: it with no ``custom_objects`` (once ``resnet.backends.tensorflow`` is imported).
serializable = keras.saving.register_keras_serializable(package="resnet")


def check_policy(layer: keras.layers.Layer) -> None:
    """Refuse a dtype policy other than float32 or float64 (a mixed one such as ``mixed_bfloat16``, float16,
    bfloat16), which a layer takes from ``keras.config.set_dtype_policy`` when given no ``dtype``.

    Mixed precision is refused here as the train step refuses it (``resnet.contract.check_mixed_precision``):
    this project's TensorFlow is the CPU build, and the layers' fast kernels (the fused BatchNorm, the grouped
    convolution) compute in the weights' precision."""
    policy = layer.dtype_policy
    if policy.name not in specs.DTYPES:
        raise ValueError(
            f"{type(layer).__name__} {layer.name!r} has the Keras dtype policy {policy.name!r} (the global one unless "
            f"given a dtype), but resnet's Keras layers compute in {' or '.join(specs.DTYPES)} only: mixed precision "
            "is refused in this CPU build of TensorFlow. Pass dtype='float32' or 'float64', or reset the global "
            "policy with keras.config.set_dtype_policy('float32')"
        )


def _onednn_enabled() -> bool:
    """Whether TensorFlow runs its oneDNN kernels (TF_ENABLE_ONEDNN_OPTS, read when it was imported); False where
    this TensorFlow does not say, so that every convolution keeps a gradient."""
    try:
        from tensorflow.python.util import _pywrap_util_port  # TensorFlow's own test utilities ask it this way
    except ImportError:
        return False
    return bool(_pywrap_util_port.IsMklEnabled())


#: Whether TensorFlow's oneDNN kernels are on: by default only on CPUs with AVX-512 VNNI, AMX and the like
#: (TF_ENABLE_ONEDNN_OPTS=1 asks for them elsewhere). Left as TensorFlow chose: on a 2-core AMD EPYC (AVX2),
#: oneDNN's float32 kernel-gradient convolution corrupted the heap with one intra-op thread
#: (TF_NUM_INTRAOP_THREADS=1, as the test matrix runs), and TensorFlow's own kernels are correct everywhere.
ONEDNN = _onednn_enabled()


def _spatial_padding(padding: int) -> list[list[int]]:
    """NHWC paddings for ``tf.pad`` / ``tf.nn.max_pool2d``: symmetric on height and width only."""
    return [[0, 0], [padding, padding], [padding, padding], [0, 0]]


@tf.custom_gradient
def _same_convolution(x: tf.Tensor, kernel: tf.Tensor) -> tuple[tf.Tensor, Callable[[tf.Tensor], tuple]]:
    """``tf.nn.conv2d(x, kernel, 1, "SAME")`` for an odd, ungrouped kernel, whose input gradient is computed as
    a forward convolution.

    TensorFlow's CPU kernel for that gradient (Conv2DBackpropInput) is many times slower than a forward
    convolution where the channels are many and the image small: measured on a 2-core AMD EPYC, one thread,
    batch 64, 512 channels, a 3x3 kernel: 449 against 7 ms at 1x1 pixels, 1163 against 59 ms at 3x3 (the last
    stage of ResNet-18 at the book's 96x96). At stride 1 with 'SAME' padding that gradient is the same
    convolution of the output's gradient with the kernel turned by 180 degrees and its channels swapped."""

    def gradients(dy: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        turned = tf.transpose(tf.reverse(kernel, axis=[0, 1]), [0, 1, 3, 2])
        dx = tf.nn.conv2d(dy, turned, 1, "SAME")
        dkernel = tf.raw_ops.Conv2DBackpropFilter(
            input=x, filter_sizes=tf.shape(kernel), out_backprop=dy, strides=[1, 1, 1, 1], padding="SAME"
        )
        return dx, dkernel

    return tf.nn.conv2d(x, kernel, 1, "SAME"), gradients


def _ungrouped_convolution(x: tf.Tensor, kernel: tf.Tensor, stride: int, padding: str) -> tf.Tensor:
    """``tf.nn.conv2d`` with an ungrouped kernel; a stride-1 'SAME' one through ``_same_convolution``, so that
    its input gradient is a forward convolution."""
    if stride == 1 and padding == "SAME":
        return _same_convolution(x, kernel)
    return tf.nn.conv2d(x, kernel, stride, padding)


@serializable
class Conv2d(keras.layers.Layer):
    """A convolution with explicit symmetric zero padding and groups, on ``tf.nn.conv2d``.

    Keras' own ``Conv2D`` pads only ``'valid'`` or ``'same'`` (asymmetric at stride 2: other numbers from the same
    weights) and runs grouped convolutions through XLA, about 100x slower on CPU. ``tf.nn.conv2d`` takes a
    grouped kernel (HWIO, I = input channels // groups) directly on its fast oneDNN path in float32 (in float64,
    one convolution per group: ``_conv2d``). At stride 1 the symmetric padding is TensorFlow's 'SAME'; otherwise
    the input is padded with ``tf.pad`` and convolved VALID (given explicit paddings instead, the CPU kernel has
    no gradient for grouped convolutions).
    Initialised as Keras' ``Conv2D``: Glorot-uniform kernel, zero bias.

    An input whose channels differ from those it was built for is a ValueError (``check_input``): ``tf.nn.conv2d``
    would read any multiple of the kernel's input channels as that many groups and compute numbers from it.
    """

    def __init__(self, spec: ConvSpec, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spec = spec
        self.bias = None

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        c = self.spec
        channels = input_shape[-1]
        if channels is None or channels % c.groups or c.in_channels not in (None, channels):
            needed = f"{c.in_channels}" if c.in_channels is not None else f"a known multiple of {c.groups}"
            raise ValueError(
                f"a convolution in {c.groups} group{'s' if c.groups > 1 else ''} needs {needed} input channels, but "
                f"is being built for the input shape {tuple(input_shape)}; build it for a channels-last shape with "
                "such channels"
            )
        self.kernel = self.add_weight(
            name="kernel",
            shape=(c.kernel, c.kernel, input_shape[-1] // c.groups, c.out_channels),
            initializer="glorot_uniform",
        )
        if c.bias:
            self.bias = self.add_weight(name="bias", shape=(c.out_channels,), initializer="zeros")

    def get_config(self) -> dict[str, Any]:
        """Keras' config: the name and dtype policy, and the layer description as a dict."""
        return {**super().get_config(), "spec": asdict(self.spec)}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Conv2d:
        config = dict(config)
        return cls(ConvSpec(**config.pop("spec")), **config)

    def check_input(self, input_shape: tuple[int | None, ...]) -> None:
        """ValueError for an input whose channels (when known: not while tracing with them unknown) are not those
        the layer was built for."""
        channels, built = input_shape[-1], self.kernel.shape[2] * self.spec.groups
        if channels is not None and channels != built:
            raise ValueError(
                f"the convolution {self.path or self.name} was built for {built} input channel"
                f"{'s' if built > 1 else ''}, but its input has {channels} (shape {tuple(input_shape)}); a model's "
                f"weights fit the channels of the first batch it saw. Feed it {built}-channel images, or build a new "
                f"model for {channels} channels"
            )

    def call(self, x: tf.Tensor) -> tf.Tensor:
        self.check_input(x.shape)
        c = self.spec
        if c.stride == 1 and 2 * c.padding == c.kernel - 1:
            # At stride 1, 'SAME' is exactly this symmetric padding, and its backward pass skips tf.pad's.
            y = self._conv2d(x, 1, "SAME")
        else:
            y = self._conv2d(tf.pad(x, _spatial_padding(c.padding)) if c.padding else x, c.stride, "VALID")
        return y if self.bias is None else tf.nn.bias_add(y, self.bias)

    def _conv2d(self, x: tf.Tensor, stride: int, padding: str) -> tf.Tensor:
        """The convolution with the layer's kernel: ungrouped, or grouped in one ``tf.nn.conv2d`` on oneDNN, or,
        for a grouped float64 convolution or where oneDNN is off, one ungrouped convolution per group.

        A grouped float32 convolution runs on oneDNN, which has its gradient; float64, and float32 where oneDNN is
        off (``ONEDNN``), runs on TensorFlow's own CPU kernels, whose forward pass is grouped but whose backward
        pass is not ("Gradients for grouped convolutions are not supported on CPU"). Split per group, the outputs
        are bit-identical to the grouped kernel's; forward and backward on 2 cores, at ResNeXt's widths (128-256
        channels), it is 2.7-4.6x faster than one convolution with a block-diagonal kernel (8x16x16x128 in 32
        groups: 38 against 177 ms)."""
        groups, kernel = self.spec.groups, tf.convert_to_tensor(self.kernel)
        if groups == 1:
            return _ungrouped_convolution(x, kernel, stride, padding)
        if x.dtype == tf.float32 and ONEDNN:
            return tf.nn.conv2d(x, kernel, stride, padding)
        inputs, kernels = tf.split(x, groups, axis=-1), tf.split(kernel, groups, axis=-1)
        return tf.concat([_ungrouped_convolution(a, k, stride, padding) for a, k in zip(inputs, kernels)], axis=-1)


@serializable
class MaxPool2d(keras.layers.Layer):
    """Max pooling with explicit symmetric padding, where padded cells never win (Keras' pads only 'same')."""

    def __init__(self, kernel: int, stride: int, padding: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.kernel, self.stride, self.padding = kernel, stride, padding

    def get_config(self) -> dict[str, Any]:
        """Keras' config: the name and dtype policy, and the pooling's arguments."""
        return {**super().get_config(), "kernel": self.kernel, "stride": self.stride, "padding": self.padding}

    def call(self, x: tf.Tensor) -> tf.Tensor:
        # TensorFlow's explicit paddings never win, as if minus infinity. Measured on a 2-core AMD EPYC (2
        # threads, 128x48x48x64, ResNet-18's pooling at 96x96) against tf.pad with minus infinity and VALID
        # pooling: forward 9-12 against 54 ms (tf.pad copies the whole input), forward and backward 197 against
        # 242 ms; ResNet-18's train step the same within the noise (42.6 against 41.7 images/s).
        return tf.nn.max_pool2d(x, self.kernel, self.stride, _spatial_padding(self.padding))


@serializable
class BatchNorm(keras.layers.BatchNormalization):
    """Keras' ``BatchNormalization`` (the same weights, arguments and running-average updates), computed with
    TensorFlow's fused kernel (``FusedBatchNormV3``, oneDNN on a CPU) for 4-D channels-last float32 inputs.

    Keras 3 normalizes with separate operations; the fused kernel's forward and backward passes are 1.7-4x
    faster on a 2-core CPU (4x48x48x64: 2.7 against 1.5 ms; 128x24x24x64: 25 against 6 ms). In inference the
    running averages fold into one scale and one shift per channel, a multiply and an add over the input, which
    TensorFlow's CPU kernels run faster than the fused one: measured in ResNet-18's inference at the book's
    settings (batch 128, 96x96, 2 threads), 17 layers took 79 ms in FusedBatchNormV3 against 33 this way.
    Anything else (a mask, float64, another axis, renorm, no scale or no center, ``synchronized=True``) goes
    through Keras' own ``call``.

    Under a ``tf.distribute`` strategy (``resnet.backends.tensorflow.parallel``) each replica updates the running
    averages from its own batch statistics; they are mirrored variables with the aggregation ``"mean"``, so
    every update is the mean over the replicas of what each replica computed, the same in every replica (Keras'
    default, ``"none"``, cannot be updated inside a replica). Outside a strategy the aggregation changes nothing.
    """

    def add_weight(self, *args: Any, **kwargs: Any) -> keras.Variable:
        if not kwargs.get("trainable", True):  # the running mean and variance
            kwargs.setdefault("aggregation", "mean")
        return super().add_weight(*args, **kwargs)

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
        in_training = bool(training) and self.trainable
        if in_training:
            check_batch_norm_batch(inputs.shape)  # Keras would write NaN into the running averages
        if not self._fused(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        if not in_training:  # per-channel vectors first: two passes over the input instead of four
            scale = self.gamma * tf.math.rsqrt(self.moving_variance + self.epsilon)
            return inputs * scale + (self.beta - self.moving_mean * scale)
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


@serializable
class Sequential(keras.Sequential):
    """``keras.Sequential`` that can also be indexed (``stage[0]``) and measured (``len``), like PyTorch's, and
    that takes a ``dtype`` as other layers do (Keras' own casts its inputs to float32 whatever its layers')."""

    def __init__(self, layers: Sequence[keras.layers.Layer] | None = None, dtype: Any = None, **kwargs: Any) -> None:
        super().__init__(layers, **kwargs)
        if dtype is not None:
            self.dtype_policy = dtype

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects: Any = None) -> Sequential:
        # keras.Sequential's builds the model from its name alone, then adds the layers: the policy goes on after.
        model = super().from_config(config, custom_objects)
        if config.get("dtype") is not None:
            model.dtype_policy = config["dtype"]
        return model

    def __getitem__(self, index: int) -> keras.layers.Layer:
        return self.layers[index]

    def __len__(self) -> int:
        return len(self.layers)


def make_layer(layer: LayerSpec, dtype: Any = None, name: str | None = None) -> keras.layers.Layer:
    """The native layer for a layer description, its input size inferred at the first call (``dtype``: Keras'
    dtype policy; every layer of a model needs its model's, as Keras casts each layer's inputs to its own).
    ``name``, the Keras name, is the layer's canonical name inside a ``Sequential`` (the stem's ``conv``, the
    head's ``fc``), where the hooks look it up; None gives Keras' own."""
    if isinstance(layer, ConvSpec):
        return Conv2d(layer, dtype=dtype, name=name)
    if isinstance(layer, BatchNormSpec):
        # Keras' momentum is the weight of the old running value; its running variance averages the biased
        # batch variance, the canonical rule.
        return BatchNorm(momentum=1 - specs.BN_MOMENTUM, epsilon=specs.BN_EPSILON, dtype=dtype, name=name)
    if isinstance(layer, DenseSpec):
        return keras.layers.Dense(layer.out_features, dtype=dtype, name=name)
    raise TypeError(f"unknown layer description {layer!r}")


@serializable
class Shortcut(keras.layers.Layer):
    """A projection shortcut, ``downsample`` in the family's blocks: a 1x1 convolution ``conv`` with the block's
    stride, then BN ``bn`` (none in a pre-activation block)."""

    def __init__(self, conv_spec: ConvSpec, batch_norm: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("name", "downsample")  # its canonical name in a block
        super().__init__(**kwargs)
        self.conv_spec, self.batch_norm = conv_spec, batch_norm
        self.conv = make_layer(conv_spec, self.dtype_policy, name="conv")
        self.bn = make_layer(BatchNormSpec(), self.dtype_policy, name="bn") if batch_norm else None

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        """Build the convolution and BN for the block's input (Keras' ``build``; nothing runs)."""
        self.conv.build(input_shape)
        if self.bn is not None:
            self.bn.build((*input_shape[:-1], self.conv_spec.out_channels))

    def get_config(self) -> dict[str, Any]:
        """Keras' config: the name and dtype policy, the convolution's description as a dict, and whether BN
        follows it."""
        return {**super().get_config(), "conv_spec": asdict(self.conv_spec), "batch_norm": self.batch_norm}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Shortcut:
        config = dict(config)
        return cls(ConvSpec(**config.pop("conv_spec")), **config)

    def call(self, X: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        X = self.conv(X)
        return X if self.bn is None else self.bn(X, training=training)
