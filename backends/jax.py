"""The chapter's models as Flax ``linen`` Modules (NHWC), and the hooks the common API calls.

The four backend modules read side by side: the same names in the same order with the same docstrings,
so that a diff between two of them shows only what differs between the frameworks.

Flax Modules hold no weights: ``init`` returns them and ``apply`` takes them. The common API keeps them
in a registry beside each model object (keyed by ``id(model)``, dropped when the model is garbage
collected): ``variables(model)`` returns ``{'params': ..., 'batch_stats': ...}`` for ``model.apply``, and
``set_variables(model, variables)`` puts variables obtained with ``init``/``apply`` back.
"""

from __future__ import annotations

import functools
import weakref
from typing import Any, Callable, Iterator, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util
from jax import lax

from resnet import specs
from resnet.init import initial_weights
from resnet.specs import (
    BatchNormSpec,
    BlockSpec,
    ConvSpec,
    DenseSpec,
    HeadSpec,
    LayerSpec,
    ModelSpec,
    StemSpec,
)

NAME = "jax"
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
    "set_variables",
    "variables",
]

Variables = dict[str, Any]  # {'params': {...}, 'batch_stats': {...}}, nested dicts of jax arrays


# ---------------------------------------------------------------------------------------------- layers


class CpuConvGeneralDilated:
    """``lax.conv_general_dilated`` for ``nn.Conv(..., conv_general_dilated_cls=CpuConvGeneralDilated)``: the
    same convolution, computed the way XLA runs fastest on a CPU.

    The layer stays an ``nn.Conv`` (parameters ``kernel``, HWIO with I = in_channels // groups, and
    ``bias``); only how the convolution is computed changes, on CPU alone (other devices run XLA's own
    kernels, which are good there). The results agree with the plain convolution to float32 rounding,
    gradients included. Two cases change:

    * Grouped (``feature_group_count > 1``): XLA's CPU kernel is slow, its backward pass above all: a training
      step through it is 30-100x slower than through separate convolutions on chunks of the channels,
      concatenated, each chunk one group or a few groups as one dense convolution with a block-diagonal
      kernel.
    * 1x1 without padding: a matrix product over the channels (after taking every ``stride``-th pixel), about
      1.3x faster, backward pass included (64 channels at 4x48x48: 2.9 against 3.8 ms on a 2-core CPU).
    """

    def __call__(
        self,
        lhs: jax.Array,
        rhs: jax.Array,
        window_strides: Sequence[int],
        padding: Any,
        lhs_dilation: Sequence[int] | None = None,
        rhs_dilation: Sequence[int] | None = None,
        dimension_numbers: Any = None,
        feature_group_count: int = 1,
        precision: Any = None,
        **kwargs: Any,
    ) -> jax.Array:
        conv = functools.partial(
            lax.conv_general_dilated,
            window_strides=window_strides,
            padding=padding,
            lhs_dilation=lhs_dilation,
            rhs_dilation=rhs_dilation,
            dimension_numbers=dimension_numbers,
            precision=precision,
            **kwargs,
        )
        groups = feature_group_count
        if jax.default_backend() != "cpu":
            return conv(lhs, rhs, feature_group_count=groups)
        # nn.Conv passes channels-last arrays: input (N, H, W, C), kernel (kh, kw, C // groups, out).
        if groups > 1:
            return _grouped_on_cpu(conv, lhs, rhs, groups)
        dilated = any(d != 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
        if rhs.shape[:2] == (1, 1) and all(tuple(p) == (0, 0) for p in padding) and not dilated and not kwargs:
            sh, sw = window_strides
            return jnp.einsum("nhwc,co->nhwo", lhs[:, ::sh, ::sw, :], rhs[0, 0], precision=precision)
        return conv(lhs, rhs)


def _grouped_on_cpu(conv: Callable[..., jax.Array], lhs: jax.Array, rhs: jax.Array, groups: int) -> jax.Array:
    """A grouped convolution as one convolution per chunk of ``_groups_per_chunk`` groups, concatenated: a
    plain convolution for a chunk of one group, else a dense one with a block-diagonal kernel. ``conv`` is
    ``lax.conv_general_dilated`` with every argument but the operands and the group count bound."""
    per_chunk = _groups_per_chunk(lhs.shape[-1], groups)
    chunks = groups // per_chunk
    pairs = zip(jnp.split(lhs, chunks, axis=-1), jnp.split(rhs, chunks, axis=-1))
    outputs = [conv(x, block_diagonal_kernel(kernel, per_chunk) if per_chunk > 1 else kernel) for x, kernel in pairs]
    return outputs[0] if chunks == 1 else jnp.concatenate(outputs, axis=-1)


def _groups_per_chunk(in_channels: int, groups: int) -> int:
    # A block-diagonal chunk of d groups does d times the multiply-adds of its groups, but in one call;
    # separate convolutions pay a fixed cost each. Measured on a 2-core CPU (fwd + bwd, jitted, 64-512
    # channels, 6x6-48x48, batch 4-32): chunks of 16 channels are fastest (8-channel groups in pairs:
    # 1.03-1.7x faster than one convolution per group, 1.1-1.7x faster than chunks of 32; groups of 2 or 4
    # channels, 8 or 4 to a chunk, matched or beat a sum of shifted products without any convolution, by up
    # to 1.6x); groups of 16 or more channels alone; up to 32 channels in all, one dense convolution.
    if in_channels <= 32:
        return groups
    width = in_channels // groups
    return max(d for d in range(1, groups + 1) if groups % d == 0 and d * width <= max(16, width))


def block_diagonal_kernel(kernel: jax.Array, groups: int) -> jax.Array:
    """A grouped HWIO kernel (kh, kw, C // groups, out) as the dense (kh, kw, C, out) kernel it acts as:
    group g's block on the diagonal, zeros elsewhere."""
    kh, kw, group_in, out = kernel.shape
    blocks = kernel.reshape(kh, kw, group_in, groups, out // groups)
    # dense[h, w, G, i, g, o] = blocks[h, w, i, g, o] if G == g else 0
    dense = jnp.einsum("hwigo,Gg->hwGigo", blocks, jnp.eye(groups, dtype=kernel.dtype))
    return dense.reshape(kh, kw, groups * group_in, out)


def make_layer(layer: LayerSpec, training: bool = True) -> nn.Module:
    """The native layer for a layer description, its input size inferred at the first call."""
    if isinstance(layer, ConvSpec):
        p = layer.padding  # explicit and symmetric: 'SAME' pads stride-2 layers asymmetrically
        return nn.Conv(
            layer.out_channels,
            (layer.kernel, layer.kernel),
            layer.stride,
            ((p, p), (p, p)),
            feature_group_count=layer.groups,
            use_bias=layer.bias,
            # XLA's own convolution unless a faster way to compute it on a CPU is known for this shape.
            conv_general_dilated_cls=CpuConvGeneralDilated if layer.groups > 1 or layer.kernel == 1 else None,
        )
    if isinstance(layer, BatchNormSpec):
        # Flax averages the biased batch variance, as specs asks; its momentum weighs the old value.
        # use_fast_variance=False: E[(x - mean)^2], not E[x^2] - mean^2, which loses digits in float32.
        return nn.BatchNorm(
            use_running_average=not training,
            momentum=1 - specs.BN_MOMENTUM,
            epsilon=specs.BN_EPSILON,
            use_fast_variance=False,
        )
    if isinstance(layer, DenseSpec):
        return nn.Dense(layer.out_features)
    raise TypeError(f"unknown layer description {layer!r}")


class Shortcut(nn.Module):
    """A projection shortcut, ``downsample`` in the family's blocks: a 1x1 convolution ``conv`` with the block's
    stride, then BN ``bn`` (none in a pre-activation block)."""

    conv_spec: ConvSpec
    batch_norm: bool = True
    training: bool = True

    def setup(self) -> None:
        self.conv = make_layer(self.conv_spec)
        self.bn = make_layer(BatchNormSpec(), self.training) if self.batch_norm else None

    def __call__(self, X: jax.Array) -> jax.Array:
        X = self.conv(X)
        return X if self.bn is None else self.bn(X)


def _add_layers(module: nn.Module, spec: BlockSpec | StemSpec | HeadSpec, training: bool) -> None:
    """In ``setup``, create a block's layers as attributes named as in the description (conv1, bn1, ...); the
    layers of a projection shortcut, ``downsample.conv`` and ``downsample.bn``, go into a ``Shortcut`` named
    ``downsample``."""
    layers = spec.layers()
    for name, layer in layers.items():
        if not name.startswith("downsample."):
            setattr(module, name, make_layer(layer, training))
    if "downsample.conv" in layers:
        module.downsample = Shortcut(layers["downsample.conv"], "downsample.bn" in layers, training)


def _check_input(module: nn.Module, x: jax.Array) -> None:
    # The identity shortcut needs the input to have the output's shape; say so instead of a broadcast error.
    if not module.spec.use_1x1conv:
        specs.check_block_input(module.spec, x.shape[-1])


def _hashable(value: Any) -> Any:
    """Lists as tuples, recursively: jax.jit takes a Module as a static argument, so it must hash."""
    return tuple(_hashable(v) for v in value) if isinstance(value, (list, tuple)) else value


# ---------------------------------------------------------------------------------------------- blocks


class Residual(nn.Module):
    """The residual block of ResNet: 3x3 conv, BN, ReLU, 3x3 conv, BN, plus the shortcut, then ReLU.

    Args:
        num_channels: output channels of both 3x3 convolutions.
        use_1x1conv: put a 1x1 convolution on the shortcut, to change channels or resolution.
        strides: stride of the first 3x3 convolution (and of the 1x1 shortcut), 1 or 2 (or the book's
            ``(2, 2)``).
        training: BatchNorm uses batch statistics and updates ``batch_stats`` (the book's field).
    """

    num_channels: int
    use_1x1conv: bool = False
    strides: int | tuple[int, int] = 1
    training: bool = True

    def __post_init__(self) -> None:
        specs.residual(self.num_channels, self.use_1x1conv, self.strides)  # ValueError now, not at the first init
        object.__setattr__(self, "strides", _hashable(self.strides))
        super().__post_init__()

    @property
    def spec(self) -> specs.ResidualSpec:
        """The architecture description the block is built from."""
        return specs.residual(self.num_channels, self.use_1x1conv, self.strides)

    def setup(self) -> None:
        _add_layers(self, self.spec, self.training)
        if not self.spec.use_1x1conv:
            self.conv3 = None

    def __call__(self, X: jax.Array) -> jax.Array:
        _check_input(self, X)
        Y = nn.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.conv3 is not None:
            X = self.conv3(X)
        return nn.relu(Y + X)


class ResNeXtBlock(nn.Module):
    """The ResNeXt block: 1x1 conv, grouped 3x3 conv, 1x1 conv (each with BN), plus the shortcut, then ReLU.

    Args:
        num_channels: output channels.
        groups: the number of groups (cardinality) of the 3x3 convolution, as in the chapter's text and the
            ResNeXt paper; each group has ``round(num_channels * bot_mul) // groups`` channels. The book's
            code passes ``bot_channels // groups`` to the convolution, so there ``groups`` is the width of
            each group: the book's ``ResNeXtBlock(32, 16, 1)`` (2 groups of 16) is ``ResNeXtBlock(32, 2, 1)``.
        bot_mul: bottleneck width as a multiple of ``num_channels``.
        use_1x1conv: put a 1x1 convolution and BN on the shortcut.
        strides: stride of the 3x3 convolution (and of the shortcut), 1 or 2 (or the book's ``(2, 2)``).
        training: BatchNorm uses batch statistics and updates ``batch_stats`` (the book's field).
    """

    num_channels: int
    groups: int
    bot_mul: float
    use_1x1conv: bool = False
    strides: int | tuple[int, int] = 1
    training: bool = True

    def __post_init__(self) -> None:
        specs.resnext(self.num_channels, self.groups, self.bot_mul, self.use_1x1conv, self.strides)  # ValueError now
        object.__setattr__(self, "strides", _hashable(self.strides))
        super().__post_init__()

    @property
    def spec(self) -> specs.ResNeXtSpec:
        """The architecture description the block is built from."""
        return specs.resnext(self.num_channels, self.groups, self.bot_mul, self.use_1x1conv, self.strides)

    def setup(self) -> None:
        _add_layers(self, self.spec, self.training)
        if not self.spec.use_1x1conv:
            self.conv4 = self.bn4 = None

    def __call__(self, X: jax.Array) -> jax.Array:
        _check_input(self, X)
        Y = nn.relu(self.bn1(self.conv1(X)))
        Y = nn.relu(self.bn2(self.conv2(Y)))
        Y = self.bn3(self.conv3(Y))
        if self.conv4 is not None:
            X = self.bn4(self.conv4(X))
        return nn.relu(Y + X)


class BasicBlock(nn.Module):
    """The basic block of ResNet-18 and -34 in torchvision's convention: 3x3 conv, BN, ReLU, 3x3 conv, BN, plus
    the shortcut, then ReLU. Unlike the chapter's ``Residual``: no convolution biases, and the projection
    shortcut ``downsample`` is a 1x1 convolution followed by BN.

    Args:
        num_channels: output channels of both 3x3 convolutions.
        use_1x1conv: a projection shortcut (1x1 convolution and BN), to change channels or resolution.
        strides: stride of the first 3x3 convolution (and of the shortcut), 1 or 2 (or ``(2, 2)``).
        training: BatchNorm uses batch statistics and updates ``batch_stats`` (the book's field).
    """

    num_channels: int
    use_1x1conv: bool = False
    strides: int | tuple[int, int] = 1
    training: bool = True

    def __post_init__(self) -> None:
        specs.basic(self.num_channels, self.use_1x1conv, self.strides)  # ValueError now, not at the first init
        object.__setattr__(self, "strides", _hashable(self.strides))
        super().__post_init__()

    @property
    def spec(self) -> specs.BasicSpec:
        """The architecture description the block is built from."""
        return specs.basic(self.num_channels, self.use_1x1conv, self.strides)

    def setup(self) -> None:
        _add_layers(self, self.spec, self.training)
        if not self.spec.use_1x1conv:
            self.downsample = None

    def __call__(self, X: jax.Array) -> jax.Array:
        _check_input(self, X)
        Y = nn.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.downsample is not None:
            X = self.downsample(X)
        return nn.relu(Y + X)


class Bottleneck(nn.Module):
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
        training: BatchNorm uses batch statistics and updates ``batch_stats`` (the book's field).
    """

    planes: int
    use_1x1conv: bool = False
    strides: int | tuple[int, int] = 1
    groups: int = 1
    base_width: int = 64
    stride_in_1x1: bool = False
    training: bool = True

    def __post_init__(self) -> None:
        self._describe()  # ValueError now, not at the first init
        object.__setattr__(self, "strides", _hashable(self.strides))
        super().__post_init__()

    @nn.nowrap
    def _describe(self) -> specs.BottleneckSpec:
        return specs.bottleneck(
            self.planes, self.use_1x1conv, self.strides, self.groups, self.base_width, self.stride_in_1x1
        )

    @property
    def spec(self) -> specs.BottleneckSpec:
        """The architecture description the block is built from."""
        return self._describe()

    def setup(self) -> None:
        _add_layers(self, self.spec, self.training)
        if not self.spec.use_1x1conv:
            self.downsample = None

    def __call__(self, X: jax.Array) -> jax.Array:
        _check_input(self, X)
        Y = nn.relu(self.bn1(self.conv1(X)))
        Y = nn.relu(self.bn2(self.conv2(Y)))
        Y = self.bn3(self.conv3(Y))
        if self.downsample is not None:
            X = self.downsample(X)
        return nn.relu(Y + X)


class PreActBasic(nn.Module):
    """The pre-activation basic block of ResNet v2 (He et al. 2016, "Identity Mappings"): BN, ReLU, 3x3 conv,
    BN, ReLU, 3x3 conv, plus the shortcut, with nothing after the addition. The projection shortcut
    ``downsample`` is a bare 1x1 convolution on the pre-activated input; no convolution biases.

    Args:
        num_channels: output channels of both 3x3 convolutions.
        use_1x1conv: a projection shortcut (1x1 convolution), to change channels or resolution.
        strides: stride of the first 3x3 convolution (and of the shortcut), 1 or 2 (or ``(2, 2)``).
        training: BatchNorm uses batch statistics and updates ``batch_stats`` (the book's field).
    """

    num_channels: int
    use_1x1conv: bool = False
    strides: int | tuple[int, int] = 1
    training: bool = True

    def __post_init__(self) -> None:
        specs.basic(self.num_channels, self.use_1x1conv, self.strides, preact=True)  # ValueError now
        object.__setattr__(self, "strides", _hashable(self.strides))
        super().__post_init__()

    @property
    def spec(self) -> specs.BasicSpec:
        """The architecture description the block is built from."""
        return specs.basic(self.num_channels, self.use_1x1conv, self.strides, preact=True)

    def setup(self) -> None:
        _add_layers(self, self.spec, self.training)
        if not self.spec.use_1x1conv:
            self.downsample = None

    def __call__(self, X: jax.Array) -> jax.Array:
        _check_input(self, X)
        Y = nn.relu(self.bn1(X))
        if self.downsample is not None:
            X = self.downsample(Y)  # the projection reads the pre-activated input
        Y = self.conv1(Y)
        Y = self.conv2(nn.relu(self.bn2(Y)))
        return Y + X


class PreActBottleneck(nn.Module):
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
        training: BatchNorm uses batch statistics and updates ``batch_stats`` (the book's field).
    """

    planes: int
    use_1x1conv: bool = False
    strides: int | tuple[int, int] = 1
    groups: int = 1
    base_width: int = 64
    stride_in_1x1: bool = False
    training: bool = True

    def __post_init__(self) -> None:
        self._describe()  # ValueError now, not at the first init
        object.__setattr__(self, "strides", _hashable(self.strides))
        super().__post_init__()

    @nn.nowrap
    def _describe(self) -> specs.BottleneckSpec:
        return specs.bottleneck(
            self.planes, self.use_1x1conv, self.strides, self.groups, self.base_width, self.stride_in_1x1, preact=True
        )

    @property
    def spec(self) -> specs.BottleneckSpec:
        """The architecture description the block is built from."""
        return self._describe()

    def setup(self) -> None:
        _add_layers(self, self.spec, self.training)
        if not self.spec.use_1x1conv:
            self.downsample = None

    def __call__(self, X: jax.Array) -> jax.Array:
        _check_input(self, X)
        Y = nn.relu(self.bn1(X))
        if self.downsample is not None:
            X = self.downsample(Y)  # the projection reads the pre-activated input
        Y = self.conv1(Y)
        Y = self.conv2(nn.relu(self.bn2(Y)))
        Y = self.conv3(nn.relu(self.bn3(Y)))
        return Y + X


# ---------------------------------------------------------------------------------------------- models


def make_block(spec: BlockSpec, training: bool = True, **module_kwargs: Any) -> nn.Module:
    """The native block for a block description (``module_kwargs``: Flax's ``name`` or ``parent``)."""
    if isinstance(spec, specs.ResidualSpec):
        return Residual(spec.num_channels, spec.use_1x1conv, spec.strides, training, **module_kwargs)
    if isinstance(spec, specs.ResNeXtSpec):
        return ResNeXtBlock(
            spec.num_channels, spec.groups, spec.bot_mul, spec.use_1x1conv, spec.strides, training, **module_kwargs
        )
    if isinstance(spec, specs.BasicSpec):
        cls = PreActBasic if spec.preact else BasicBlock
        return cls(spec.num_channels, spec.use_1x1conv, spec.strides, training, **module_kwargs)
    return (PreActBottleneck if spec.preact else Bottleneck)(
        spec.planes, spec.use_1x1conv, spec.strides, spec.groups, spec.base_width, spec.stride_in_1x1, training,
        **module_kwargs,
    )


# Flax's nn.Sequential names its children layers_0, layers_1...; these three small Modules give the
# parameter tree the canonical names instead (b1/conv, b2/0/conv1, last/fc), as torch's module tree has.


class Stem(nn.Module):
    """The book's ``b1``: 7x7 convolution with stride 2, BN, ReLU, 3x3 max pooling with stride 2."""

    spec: StemSpec = StemSpec()
    training: bool = True

    def setup(self) -> None:
        _add_layers(self, self.spec, self.training)

    def __call__(self, X: jax.Array) -> jax.Array:
        pool = self.spec.pool
        X = nn.relu(self.bn(self.conv(X)))
        # Explicit padding: nn.max_pool pads with -inf, so padded cells never win.
        p = pool.padding
        return nn.max_pool(X, (pool.kernel, pool.kernel), (pool.stride, pool.stride), ((p, p), (p, p)))


class Stage(nn.Module):
    """A stage of blocks, named ``0``, ``1``... in the parameter tree.

    ``stage[i]`` and ``len(stage)`` work as on torch's ``nn.Sequential``; ``stage[i]`` is a new, unbound
    block built from the same description (a Flax Module is a description; the weights live in variables).
    """

    blocks: tuple[BlockSpec, ...]
    training: bool = True

    def setup(self) -> None:
        self.layers = [make_block(spec, self.training, name=str(i)) for i, spec in enumerate(self.blocks)]

    def __call__(self, X: jax.Array) -> jax.Array:
        for block in self.layers:
            X = block(X)
        return X

    @nn.nowrap
    def __getitem__(self, index: int) -> nn.Module:
        return make_block(self.blocks[index], self.training, parent=None)

    @nn.nowrap
    def __len__(self) -> int:
        return len(self.blocks)


class Head(nn.Module):
    """The book's ``last``: global average pooling (a mean over height and width) and a dense layer to the
    classes; after BN and ReLU in a pre-activation model (ResNet v2)."""

    spec: HeadSpec
    training: bool = True

    def setup(self) -> None:
        _add_layers(self, self.spec, self.training)

    def __call__(self, X: jax.Array) -> jax.Array:
        if self.spec.preact:
            X = nn.relu(self.bn(X))
        return self.fc(X.mean(axis=(1, 2)))


class ResNet(nn.Module):
    """The chapter's ResNet: the stem ``b1``, one stage per ``arch`` entry (``b2``, ``b3``...), the head ``last``.

    Args:
        arch: one ``(num_residuals, num_channels)`` pair per stage, e.g. ``((2, 64), (2, 128), (2, 256),
            (2, 512))`` for ResNet-18.
        num_classes: outputs of the final dense layer.
        training: BatchNorm uses batch statistics and updates ``batch_stats`` (the book's field).
        spec: instead of ``arch`` and ``num_classes``, any model description (``resnet.specs.ModelSpec``), as
            the family's builders (``resnet50()``...) pass: the same parts, from its stem, stages and head.
        dtype: ``"float32"`` (the default) or ``"float64"``, the precision of the weights and the computation.
            Flax's layers compute in their inputs' and weights' precision; float64 needs JAX's x64 mode, which
            a float64 model turns on for the process (``jax_enable_x64``: JAX has no per-array switch).
    """

    arch: Sequence[Sequence[int]] | None = None
    num_classes: int = 10
    training: bool = True
    spec: ModelSpec | None = None
    dtype: str = "float32"

    def __post_init__(self) -> None:
        # ValueError now, not at the first init; the book's arch becomes its description.
        object.__setattr__(self, "spec", specs.model_spec(self.arch, self.num_classes, self.spec))
        object.__setattr__(self, "arch", _hashable(self.arch))
        object.__setattr__(self, "dtype", specs.check_dtype(self.dtype))
        if self.dtype == "float64" and not jax.config.jax_enable_x64:
            jax.config.update("jax_enable_x64", True)
        super().__post_init__()

    def setup(self) -> None:
        # Named at creation, so the parameter tree has the canonical names b1, b2..., last.
        parts = [self.b1(name="b1")]
        for stage_name, blocks in self.spec.stages:  # the book's self.block(...) for the book's arch
            parts.append(Stage(blocks, self.training, name=stage_name))
        parts.append(Head(self.spec.head, self.training, name="last"))
        self.net = parts

    @nn.nowrap
    def b1(self, name: str | None = None) -> Stem:
        """The stem: 7x7 convolution with stride 2, BN, ReLU, 3x3 max pooling with stride 2 (``name``: the
        Flax name, which the model gives its parts)."""
        return Stem(self.spec.stem, self.training, name=name)

    @nn.nowrap
    def block(
        self, num_residuals: int, num_channels: int, first_block: bool = False, name: str | None = None
    ) -> Stage:
        """A stage of ``num_residuals`` blocks; all but the first stage start by halving height and width
        (``name``: the Flax name, which the model gives its parts)."""
        return Stage(specs.book_stage(num_residuals, num_channels, first_block), self.training, name=name)

    def __call__(self, X: jax.Array) -> jax.Array:
        specs.check_model_input(self.spec, X.shape[-1])
        for part in self.net:
            X = part(X)
        return X

    def part_outputs(self, X: jax.Array) -> list[tuple[str, jax.Array]]:
        """(name, output) of each top-level part: ``b1``, the stages, ``last``."""
        outputs = []
        for part in self.net:
            X = part(X)
            outputs.append((part.name, X))
        return outputs


def ResNet18(num_classes: int = 10, training: bool = True, *, dtype: str = "float32") -> ResNet:
    """The book's ResNet-18: four stages of two residual blocks, 64 to 512 channels."""
    return ResNet(specs.RESNET18_ARCH, num_classes, training, dtype=dtype)


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


# ------------------------------------------------------------------------------------------ variables

_VARIABLES: dict[int, Variables] = {}  # id(model) -> its variables; an entry goes when its model does


def variables(model: nn.Module) -> Variables:
    """The model's variables, ``{'params': ..., 'batch_stats': ...}``, for ``model.apply``.

    A training step donates the arrays to the updated ones (no copy): take them again after training.
    """
    if not is_built(model):
        raise ValueError(
            "this model has no weights yet: its layers are created on first use. Build it first, for example "
            "with resnet.output_shape(model, input_shape)."
        )
    return dict(_VARIABLES[id(model)])


def set_variables(model: nn.Module, variables: Variables) -> None:
    """Make ``variables`` (as ``model.init`` or ``model.apply(..., mutable=['batch_stats'])`` give them)
    the model's own. The model takes the arrays themselves: a training step then donates them."""
    if "params" not in variables:
        raise ValueError(f"variables need a 'params' collection; got {sorted(variables)}")
    key = id(model)
    if key not in _VARIABLES:
        weakref.finalize(model, _VARIABLES.pop, key, None)
    _VARIABLES[key] = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


def _training(module: nn.Module, variables: Variables, x: jax.Array) -> tuple[jax.Array, Any]:
    """Training-mode output and the updated batch_stats."""
    y, updates = module.apply(variables, x, mutable=["batch_stats"])
    return y, updates["batch_stats"]


def _in_bfloat16(params: Any, x: jax.Array) -> tuple[Any, jax.Array]:
    """bfloat16 copies of the weights and the batch, for mixed precision: the gradient flows back through the
    cast to the float32 weights, and BatchNorm keeps its statistics (``batch_stats``) in float32."""
    return jax.tree_util.tree_map(lambda leaf: leaf.astype(jnp.bfloat16), params), x.astype(jnp.bfloat16)


# Jitted once per architecture, for calls that repeat (a Module without weights hashes by its fields).
# One-off calls (output_shape, forward, vjp) run eagerly: compiling ResNet-18 takes seconds, running it once
# eagerly a fraction of one.
@functools.partial(jax.jit, static_argnums=(0, 3))
def _inference(module: nn.Module, variables: Variables, x: jax.Array, mixed_precision: bool) -> jax.Array:
    """Inference-mode outputs, computed in bfloat16 when ``mixed_precision`` (returned as float32)."""
    if not mixed_precision:
        return module.apply(variables, x)
    params, batch = _in_bfloat16(variables["params"], x)
    return module.apply({**variables, "params": params}, batch).astype(jnp.float32)


# ------------------------------------------------------------------------------- common-API hooks


def is_native_model(obj: Any) -> bool:
    """True if ``obj`` is a block or model of this backend."""
    return isinstance(obj, (Residual, ResNeXtBlock, BasicBlock, Bottleneck, PreActBasic, PreActBottleneck, ResNet))


def spec_of(model: Any) -> BlockSpec | ModelSpec:
    """The architecture description the model was built from."""
    return model.spec


def dtype_of(model: nn.Module) -> str:
    """The precision of the model's weights, ``"float32"`` or ``"float64"`` (the model's ``dtype`` field;
    blocks are float32)."""
    return getattr(model, "dtype", "float32")


def device_of(model: nn.Module) -> str:
    """Where the model's weights are: ``"cpu:0"`` or ``"gpu:0"``... (JAX's default device, unless moved)."""
    leaf = jax.tree_util.tree_leaves(variables(model)["params"])[0] if is_built(model) else jnp.zeros(())
    device = next(iter(leaf.devices()))
    return f"{device.platform}:{device.id}"


def to_accelerator(model: nn.Module) -> str:
    """JAX puts arrays on its default device, a GPU when jaxlib's CUDA plugin is installed (``jax[cuda12]``),
    so nothing moves; returns ``device_of(model)``."""
    return device_of(model)


def to_native(x: np.ndarray, dtype: str = "float32") -> jax.Array:
    """An NCHW NumPy array as a native array of ``dtype`` in NHWC order (2-D arrays are left as they are)."""
    x = np.asarray(x, dtype=dtype)
    return jnp.asarray(x.transpose(0, 2, 3, 1) if x.ndim == 4 else x)


def to_numpy(y: jax.Array) -> np.ndarray:
    """A native array as a NumPy array in NCHW order."""
    y = np.array(y)  # a writable copy: NumPy views of jax arrays are read-only
    return y.transpose(0, 3, 1, 2) if y.ndim == 4 else y


def is_built(model: nn.Module) -> bool:
    """True once the model has its weights (in this module's registry)."""
    return id(model) in _VARIABLES


def build(model: nn.Module, input_shape: tuple[int, ...]) -> None:
    """Create the weights of a model's layers for an NCHW input shape (a no-op once built)."""
    if not is_built(model):
        # Flax's initializers would compile for ~10-20 s (ResNet-18 on a CPU): take only the variables'
        # shapes from Flax, and the values from the seeded framework-neutral initializer, as the trainer does.
        n, c, h, w = input_shape
        x = jax.ShapeDtypeStruct((n, h, w, c), dtype_of(model))
        shapes = jax.eval_shape(model.clone(training=False).init, jax.random.PRNGKey(0), x)
        set_variables(model, jax.tree_util.tree_map(lambda leaf: np.zeros(leaf.shape, leaf.dtype), shapes))
        set_arrays(model, initial_weights(model.spec, input_shape))


def apply(model: nn.Module, x: jax.Array, training: bool) -> jax.Array:
    """Run the model; in training mode BatchNorm uses batch statistics and updates its running averages."""
    if not is_built(model):
        n, h, w, c = x.shape
        build(model, (n, c, h, w))
    state = variables(model)
    if not training:
        return model.clone(training=False).apply(state, x)
    y, batch_stats = _training(model.clone(training=True), state, x)
    set_variables(model, {**state, "batch_stats": batch_stats})
    return y


def part_outputs(model: nn.Module, x: jax.Array) -> list[tuple[str, jax.Array]]:
    """(name, output) of each top-level part of a ResNet in inference mode; one entry for a block."""
    if not isinstance(model, ResNet):
        return [(type(model).__name__, apply(model, x, training=False))]
    return model.clone(training=False).apply(variables(model), x, method=ResNet.part_outputs)


def trainable_count(model: nn.Module) -> int:
    """Number of trainable parameters (BatchNorm running statistics are ``batch_stats``, not ``params``)."""
    return sum(p.size for p in jax.tree_util.tree_leaves(variables(model)["params"]))


# Canonical tensor of each kind of layer -> (Flax collection, variable name).
_CONV_VARIABLES = {"weight": ("params", "kernel"), "bias": ("params", "bias")}
_BN_VARIABLES = {
    "weight": ("params", "scale"),
    "bias": ("params", "bias"),
    "running_mean": ("batch_stats", "mean"),
    "running_var": ("batch_stats", "var"),
}
# Axes that take a native kernel to the canonical layout: HWIO -> OIHW, (in, out) -> (out, in).
_CONV_KERNEL_AXES, _DENSE_KERNEL_AXES = (3, 2, 0, 1), (1, 0)


def _layer_groups(spec: BlockSpec | ModelSpec) -> Iterator[tuple[tuple[str, ...], dict[str, LayerSpec]]]:
    """(Flax module path, layers by name) of each block or part; the path joined by dots is the canonical
    prefix (``("b2", "0")`` -> ``b2.0.``)."""
    if not isinstance(spec, ModelSpec):
        yield (), spec.layers()
        return
    yield ("b1",), spec.stem.layers()
    for prefix, block in spec.blocks():
        yield tuple(prefix.split(".")), block.layers()
    yield ("last",), spec.head.layers()


def _native_items(model: nn.Module) -> dict[str, tuple[tuple[str, ...], tuple[int, ...] | None]]:
    """Canonical name -> (key in the flattened variables, axes from native to canonical layout or None)."""
    items = {}
    for path, layers in _layer_groups(model.spec):
        for layer_name, layer in layers.items():
            if isinstance(layer, BatchNormSpec):
                tensors = _BN_VARIABLES
            elif isinstance(layer, ConvSpec) and not layer.bias:
                tensors = {"weight": _CONV_VARIABLES["weight"]}
            else:
                tensors = _CONV_VARIABLES
            kernel_axes = _CONV_KERNEL_AXES if isinstance(layer, ConvSpec) else _DENSE_KERNEL_AXES
            for tensor, (collection, variable) in tensors.items():
                name = ".".join((*path, layer_name, tensor))
                axes = kernel_axes if variable == "kernel" else None
                # a dotted layer name (downsample.conv) is a module inside a module
                items[name] = ((collection, *path, *layer_name.split("."), variable), axes)
    return items


def _canonical(model: nn.Module, tree: Variables) -> dict[str, np.ndarray]:
    """Canonical name -> array in canonical layout, for every tensor of ``tree`` (variables or gradients with
    the same structure)."""
    flat = traverse_util.flatten_dict(tree)
    return {
        name: np.array(np.asarray(flat[key]).transpose(axes) if axes else flat[key])
        for name, (key, axes) in _native_items(model).items()
        if key in flat
    }


def get_arrays(model: nn.Module) -> dict[str, np.ndarray]:
    """Every weight and BatchNorm statistic as canonical name -> array in canonical layout, in the model's
    precision."""
    return _canonical(model, variables(model))


def set_arrays(model: nn.Module, arrays: dict[str, np.ndarray]) -> None:
    """Assign canonical arrays (already checked against ``get_arrays``) to the model's tensors, in the model's
    precision."""
    native, dtype = _native_items(model), dtype_of(model)
    flat = traverse_util.flatten_dict(variables(model))
    for name, value in arrays.items():
        key, axes = native[name]
        value = np.asarray(value, dtype=dtype)
        flat[key] = jnp.asarray(value.transpose(np.argsort(axes)) if axes else value)
    set_variables(model, traverse_util.unflatten_dict(flat))


def vjp(model: nn.Module, x: np.ndarray, output_grad: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Training-mode output for an NCHW batch and the gradients of ``sum(output * output_grad)``.

    Gradients come back by canonical name in canonical layout. BatchNorm updates its running averages as
    in a training step.
    """
    build(model, x.shape)
    state, module, dtype = variables(model), model.clone(training=True), dtype_of(model)

    def forward(params: Any) -> tuple[jax.Array, Any]:
        return _training(module, {**state, "params": params}, to_native(x, dtype))

    y, pullback, batch_stats = jax.vjp(forward, state["params"], has_aux=True)
    (grads,) = pullback(to_native(output_grad, dtype))
    set_variables(model, {**state, "batch_stats": batch_stats})
    return to_numpy(y), _canonical(model, {"params": grads})


@functools.partial(jax.jit, static_argnums=(0, 6), donate_argnums=(1, 2))
def _sgd_step(
    module: nn.Module,
    params: Any,
    batch_stats: Any,
    x: jax.Array,
    labels: jax.Array,
    lr: jax.Array,
    mixed_precision: bool = False,
):
    """One plain SGD step as a single XLA computation, compiled once per architecture and batch shape (the
    learning rate is an argument, so every run of a model shares it); the old weights' buffers are donated."""
    optimizer = optax.sgd(lr)  # no momentum: its state is empty

    def loss_fn(params: Any) -> tuple[jax.Array, Any]:
        weights, batch = _in_bfloat16(params, x) if mixed_precision else (params, x)
        logits, updates = module.apply({"params": weights, "batch_stats": batch_stats}, batch, mutable=["batch_stats"])
        logits = logits.astype(lr.dtype)  # the loss in the weights' precision
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), updates["batch_stats"]

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, _ = optimizer.update(grads, optimizer.init(params), params)
    return optax.apply_updates(params, updates), batch_stats, loss


def make_train_step(
    model: nn.Module, lr: float, compile: bool = False, mixed_precision: bool = False
) -> Callable[..., float | Callable[[], float]]:
    """A function taking one plain SGD step (the book's optimizer) on the mean softmax cross-entropy of an
    NCHW batch and its integer labels, with BatchNorm in training mode; it returns the loss. With
    ``wait=False`` it returns at once a function that waits for the step and gives its loss, so that a loop
    can prepare the next batch while the framework computes (what ``resnet.training.fit`` does).

    ``compile`` is accepted so that every backend takes the same call; this backend's step is always compiled.
    ``mixed_precision=True`` computes in bfloat16, keeping float32 weights and BatchNorm statistics (for a
    GPU). The step runs on JAX's default device; Flax is channels-last already.
    """
    dtype = specs.check_mixed_precision(dtype_of(model), mixed_precision, NAME)
    module, rate = model.clone(training=True), jnp.asarray(lr, dtype)

    def train_step(x: np.ndarray, labels: np.ndarray, wait: bool = True) -> float | Callable[[], float]:
        build(model, x.shape)
        state = variables(model)
        params, batch_stats, loss = _sgd_step(
            module,
            state["params"],
            state["batch_stats"],
            to_native(x, dtype),
            jnp.asarray(labels, jnp.int32),
            rate,
            mixed_precision,
        )
        set_variables(model, {"params": params, "batch_stats": batch_stats})
        return float(loss) if wait else lambda: float(loss)

    return train_step


def make_predict(model: nn.Module, mixed_precision: bool = False) -> Callable[[np.ndarray], np.ndarray]:
    """A function returning the model's inference-mode outputs (NumPy, in the model's precision) for an NCHW
    NumPy batch; ``mixed_precision=True`` computes in bfloat16 as the train step does."""

    dtype = specs.check_mixed_precision(dtype_of(model), mixed_precision, NAME)
    module = model.clone(training=False)

    def predict(x: np.ndarray) -> np.ndarray:
        build(model, x.shape)
        return to_numpy(_inference(module, variables(model), to_native(x, dtype), mixed_precision))

    return predict
