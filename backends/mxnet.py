"""The chapter's models as MXNet Gluon ``HybridBlock``s (NCHW), and the hooks the common API calls.

The four backend modules read side by side: the same names in the same order with the same docstrings,
so that a diff between two of them shows only what differs between the frameworks.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon
from mxnet.gluon import nn

from resnet import specs
from resnet.shapes import model_part_shapes
from resnet.specs import BatchNormSpec, BlockSpec, ConvSpec, DenseSpec, LayerSpec, ModelSpec

NAME = "mxnet"
LAYOUT = "NCHW"

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

# No BatchNorm subclass here (torch needs one): Gluon's BatchNorm already averages the *biased* batch
# variance and infers its channel count at the first call. It updates the running averages in the
# *backward* pass, though, which ``apply`` below has to allow for.


class ChunkedConv2D(nn.Conv2D):
    """A grouped ``nn.Conv2D`` (same parameters: ``weight`` of shape (out, in // groups, kh, kw), ``bias``)
    computed as one dense convolution per chunk of ``chunk`` channels, concatenated: each chunk's kernel is
    block-diagonal, its groups' blocks on the diagonal and zeros elsewhere. Results and gradients agree with
    the grouped convolution to float32 rounding.

    MXNet 1.9.1's hybridized graph runs grouped convolutions with narrow groups far slower than this: a
    ResNeXt block's train step with 64 channels in 8 groups took 125 ms through Gluon's own grouped
    convolution, 35 ms as one block-diagonal convolution and 24 ms in chunks of 16 channels (measured on a
    2-core CPU, batch 4, 48x48). ``make_layer`` uses it where ``_channels_per_chunk`` says so.
    """

    def __init__(self, *args: Any, chunk: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._chunk = chunk

    def hybrid_forward(self, F: Any, x: Any, weight: Any, bias: Any = None) -> Any:
        options = dict(self._kwargs)
        groups, channels = options.pop("num_group"), options.pop("num_filter")
        chunks = channels // self._chunk
        per_chunk = groups // chunks
        if chunks == 1:
            inputs, weights, biases = [x], [weight], [bias]
        else:  # our grouped convolutions map as many channels in as out, so one split serves both sides
            inputs, weights = F.split(x, num_outputs=chunks, axis=1), F.split(weight, num_outputs=chunks, axis=0)
            biases = [None] * chunks if bias is None else F.split(bias, num_outputs=chunks, axis=0)
        outputs = []
        for index, (inputs_, weight_, bias_) in enumerate(zip(inputs, weights, biases)):
            kernel = _block_diagonal(F, weight_, per_chunk)
            operands = (inputs_, kernel) if bias_ is None else (inputs_, kernel, bias_)
            outputs.append(F.Convolution(*operands, name=f"chunk{index}", num_group=1, num_filter=self._chunk,
                                         **options))
        return outputs[0] if chunks == 1 else F.concat(*outputs, dim=1)


def _block_diagonal(F: Any, weight: Any, groups: int) -> Any:
    """A grouped OIHW kernel (out, in // groups, kh, kw) as the dense (out, in, kh, kw) kernel it acts as."""
    if groups == 1:
        return weight
    # (out, in/g, kh, kw) -> (g, out/g, 1, in/g, kh, kw), times eye(g) over the two group axes, then merged
    # back to the dense (out, in, kh, kw).
    blocks = F.expand_dims(F.reshape(weight, shape=(-4, groups, -1, -2)), axis=2)
    eye = F.reshape(F.eye(groups), shape=(groups, 1, groups, 1, 1, 1))
    return F.reshape(F.broadcast_mul(blocks, eye), shape=(-3, -3, -2))


def _channels_per_chunk(channels: int, groups: int) -> int | None:
    """How many channels ``ChunkedConv2D`` computes at a time for a grouped convolution, or None for Gluon's
    own grouped convolution, for one with as many ``channels`` in as out."""
    # Measured (hybridized ResNeXt block, fwd + bwd, 2-core CPU, batch 4): with 16 or more channels per group
    # Gluon's kernel is fastest (256 channels in 16 groups at 12x12: 7.6 against 11.6 ms in chunks). With 1-8
    # channels per group, chunks of 16 channels win up to 64 channels (64 in 8, 16 or 32 groups at 48x48:
    # 21-24 ms, against 24-27 ms in chunks of 32, 33-35 ms as one block-diagonal convolution and 27-170 ms
    # through Gluon's kernel), and chunks of 32 from 128 channels up (128 at 24x24: 15 ms, against 29 ms as one
    # convolution and 61 ms in chunks of 16; 256-512 at 6x6-12x12: 11-12 ms, against 14-15 ms in chunks of 64
    # and 25-35 ms in chunks of 16). Chunks of 8 channels crashed the process (a floating-point exception), so
    # widths that do not divide a chunk keep the earlier rule: one block-diagonal convolution for 4-8 channels
    # per group up to 128 channels, Gluon's kernel otherwise.
    width = channels // groups
    if width >= 16:
        return None
    chunk = 16 if channels <= 64 else 32
    if chunk % width == 0 and channels % chunk == 0:
        return chunk
    return channels if 4 <= width <= 8 and channels <= 128 else None


def make_layer(layer: LayerSpec) -> nn.HybridBlock:
    """The native layer for a layer description, its input size inferred at the first call."""
    if isinstance(layer, ConvSpec):
        square = layer.in_channels in (None, layer.out_channels)  # a ResNeXt block's is; chunks need it
        chunk = _channels_per_chunk(layer.out_channels, layer.groups) if layer.groups > 1 and square else None
        if chunk is not None:
            # Its input size given, not inferred: the dense form hides the weight's shape from Gluon's inference.
            return ChunkedConv2D(
                layer.out_channels, layer.kernel, layer.stride, layer.padding, groups=layer.groups,
                use_bias=layer.bias, in_channels=layer.out_channels, chunk=chunk,
            )
        return nn.Conv2D(
            layer.out_channels, layer.kernel, layer.stride, layer.padding, groups=layer.groups, use_bias=layer.bias
        )
    if isinstance(layer, BatchNormSpec):
        # Gluon's momentum is the weight of the old running value: the complement of ours.
        return nn.BatchNorm(momentum=1 - specs.BN_MOMENTUM, epsilon=specs.BN_EPSILON)
    if isinstance(layer, DenseSpec):
        return nn.Dense(layer.out_features)
    raise TypeError(f"unknown layer description {layer!r}")


def _relu(F: Any, x: Any) -> Any:
    """ReLU as MXNet's ``Activation`` operator rather than ``F.relu``: the same function and gradient, but
    ``relu`` has no MKL-DNN kernel, so each call converts its input out of MKL-DNN's blocked layout (and the
    next MKL-DNN operator converts it back).
    A ResNeXt block's train step (64 channels, batch 4, 48x48, 2-core CPU) took 22 against 38 ms with 2 groups
    and 17 against 22 ms with 8."""
    return F.Activation(x, act_type="relu")


class Shortcut(nn.HybridBlock):
    """A projection shortcut, ``downsample`` in the family's blocks: a 1x1 convolution ``conv`` with the block's
    stride, then BN ``bn`` (none in a pre-activation block)."""

    def __init__(self, conv_spec: ConvSpec, batch_norm: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.conv = make_layer(conv_spec)
        self.bn = make_layer(BatchNormSpec()) if batch_norm else None

    def hybrid_forward(self, F: Any, X: Any) -> Any:
        X = self.conv(X)
        return X if self.bn is None else self.bn(X)


def _add_layers(block: nn.HybridBlock, spec: BlockSpec) -> None:
    """Create a block's layers as attributes named as in the description (conv1, bn1, ...); the layers of a
    projection shortcut, ``downsample.conv`` and ``downsample.bn``, go into a ``Shortcut`` named ``downsample``."""
    layers = spec.layers()
    for name, layer in layers.items():
        if not name.startswith("downsample."):
            setattr(block, name, make_layer(layer))
    if "downsample.conv" in layers:
        block.downsample = Shortcut(layers["downsample.conv"], "downsample.bn" in layers)


def _check_input(block: nn.HybridBlock, x: Any) -> None:
    # The identity shortcut needs the input to have the output's shape; say so instead of a broadcast error.
    # Only an NDArray has a shape: inside a hybridized parent the blocks see shapeless Symbols, and there the
    # parent (a ResNet's stage) guarantees the shapes.
    if not block.spec.use_1x1conv and isinstance(x, mx.nd.NDArray):
        specs.check_block_input(block.spec, x.shape[1])


def _sequential(parts: dict[str, nn.HybridBlock]) -> nn.HybridSequential:
    """A HybridSequential whose children have names, like torch's ``nn.Sequential(OrderedDict(...))``.

    ``add`` would name them "0", "1", ...; setting an attribute registers the child under that name, in
    order, and leaves it reachable as ``seq.<name>``.
    """
    seq = nn.HybridSequential()
    for name, part in parts.items():
        setattr(seq, name, part)
    return seq


# ---------------------------------------------------------------------------------------------- blocks


class Residual(nn.HybridBlock):
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

    def forward(self, X: Any) -> Any:
        # Checked here, before Gluon hands a hybridized block's input to its cached graph.
        _check_input(self, X)
        return super().forward(X)

    def hybrid_forward(self, F: Any, X: Any) -> Any:
        Y = _relu(F, self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.conv3 is not None:
            X = self.conv3(X)
        return _relu(F, Y + X)


class ResNeXtBlock(nn.HybridBlock):
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

    def forward(self, X: Any) -> Any:
        # Checked here, before Gluon hands a hybridized block's input to its cached graph.
        _check_input(self, X)
        return super().forward(X)

    def hybrid_forward(self, F: Any, X: Any) -> Any:
        Y = _relu(F, self.bn1(self.conv1(X)))
        Y = _relu(F, self.bn2(self.conv2(Y)))
        Y = self.bn3(self.conv3(Y))
        if self.conv4 is not None:
            X = self.bn4(self.conv4(X))
        return _relu(F, Y + X)


class BasicBlock(nn.HybridBlock):
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

    def forward(self, X: Any) -> Any:
        # Checked here, before Gluon hands a hybridized block's input to its cached graph.
        _check_input(self, X)
        return super().forward(X)

    def hybrid_forward(self, F: Any, X: Any) -> Any:
        Y = _relu(F, self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.downsample is not None:
            X = self.downsample(X)
        return _relu(F, Y + X)


class Bottleneck(nn.HybridBlock):
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

    def forward(self, X: Any) -> Any:
        # Checked here, before Gluon hands a hybridized block's input to its cached graph.
        _check_input(self, X)
        return super().forward(X)

    def hybrid_forward(self, F: Any, X: Any) -> Any:
        Y = _relu(F, self.bn1(self.conv1(X)))
        Y = _relu(F, self.bn2(self.conv2(Y)))
        Y = self.bn3(self.conv3(Y))
        if self.downsample is not None:
            X = self.downsample(X)
        return _relu(F, Y + X)


class PreActBasic(nn.HybridBlock):
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

    def forward(self, X: Any) -> Any:
        # Checked here, before Gluon hands a hybridized block's input to its cached graph.
        _check_input(self, X)
        return super().forward(X)

    def hybrid_forward(self, F: Any, X: Any) -> Any:
        Y = _relu(F, self.bn1(X))
        if self.downsample is not None:
            X = self.downsample(Y)  # the projection reads the pre-activated input
        Y = self.conv1(Y)
        Y = self.conv2(_relu(F, self.bn2(Y)))
        return Y + X


class PreActBottleneck(nn.HybridBlock):
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

    def forward(self, X: Any) -> Any:
        # Checked here, before Gluon hands a hybridized block's input to its cached graph.
        _check_input(self, X)
        return super().forward(X)

    def hybrid_forward(self, F: Any, X: Any) -> Any:
        Y = _relu(F, self.bn1(X))
        if self.downsample is not None:
            X = self.downsample(Y)  # the projection reads the pre-activated input
        Y = self.conv1(Y)
        Y = self.conv2(_relu(F, self.bn2(Y)))
        Y = self.conv3(_relu(F, self.bn3(Y)))
        return Y + X


# ---------------------------------------------------------------------------------------------- models


def make_block(spec: BlockSpec) -> nn.HybridBlock:
    """The native block for a block description."""
    if isinstance(spec, specs.ResidualSpec):
        return Residual(spec.num_channels, spec.use_1x1conv, spec.strides)
    if isinstance(spec, specs.ResNeXtSpec):
        return ResNeXtBlock(spec.num_channels, spec.groups, spec.bot_mul, spec.use_1x1conv, spec.strides)
    if isinstance(spec, specs.BasicSpec):
        return (PreActBasic if spec.preact else BasicBlock)(spec.num_channels, spec.use_1x1conv, spec.strides)
    return (PreActBottleneck if spec.preact else Bottleneck)(
        spec.planes, spec.use_1x1conv, spec.strides, spec.groups, spec.base_width, spec.stride_in_1x1
    )


class ResNet(nn.HybridBlock):
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
        super().__init__(**kwargs)
        self.spec = specs.model_spec(arch, num_classes, spec)
        dtype = specs.check_dtype(dtype)
        parts: dict[str, nn.HybridBlock] = dict(b1=self.b1())
        for stage_name, blocks in self.spec.stages:  # the book's self.block(...) for the book's arch
            stage = nn.HybridSequential()
            stage.add(*(make_block(b) for b in blocks))
            parts[stage_name] = stage
        parts["last"] = self.head()
        self.net = _sequential(parts)
        self.cast(dtype)  # Gluon's parameters take this precision when they are created

    def b1(self) -> nn.HybridSequential:
        """The stem: 7x7 convolution with stride 2, BN, ReLU, 3x3 max pooling with stride 2."""
        layers, pool = self.spec.stem.layers(), self.spec.stem.pool
        return _sequential(
            dict(
                conv=make_layer(layers["conv"]),
                bn=make_layer(layers["bn"]),
                relu=nn.Activation("relu"),
                # Padded cells never win: MXNet's max pooling takes the maximum over the real cells only.
                pool=nn.MaxPool2D(pool.kernel, pool.stride, pool.padding),
            )
        )

    def block(self, num_residuals: int, num_channels: int, first_block: bool = False) -> nn.HybridSequential:
        """A stage of ``num_residuals`` blocks; all but the first stage start by halving height and width."""
        stage = nn.HybridSequential()
        stage.add(*(make_block(b) for b in specs.book_stage(num_residuals, num_channels, first_block)))
        return stage

    def head(self) -> nn.HybridSequential:
        """The head: global average pooling and a dense layer to the classes (after BN and ReLU in ResNet v2)."""
        layers = self.spec.head.layers()
        preact = dict(bn=make_layer(layers["bn"]), relu=nn.Activation("relu")) if "bn" in layers else {}
        return _sequential(dict(**preact, pool=nn.GlobalAvgPool2D(), flatten=nn.Flatten(), fc=make_layer(layers["fc"])))

    def forward(self, X: Any) -> Any:
        # Inside a hybridized ResNet the blocks see shapeless Symbols and cannot check their inputs: check
        # the whole model's shapes from its description first (clear errors for a misfit input or stage).
        if isinstance(X, mx.nd.NDArray):
            model_part_shapes(self.spec, X.shape)
        return super().forward(X)

    def hybrid_forward(self, F: Any, X: Any) -> Any:
        return self.net(X)


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


def dtype_of(model: nn.HybridBlock) -> str:
    """The precision of the model's weights, ``"float32"`` or ``"float64"`` (``model.cast(...)`` counts)."""
    return np.dtype(next(iter(model.collect_params().values())).dtype).name


def device_of(model: nn.HybridBlock) -> str:
    """Where the model's weights are: ``"cpu:0"`` (Gluon's context, ``mx.cpu(0)``)."""
    parameter = next(iter(model.collect_params().values()))
    context = parameter.list_ctx()[0] if parameter._ctx_list else mx.context.current_context()
    return f"{context.device_type}:{context.device_id}"


def to_accelerator(model: nn.HybridBlock) -> str:
    """Gluon runs where its context says; this project installs MXNet's CPU build (``mxnet``, not
    ``mxnet-cuXXX``) and makes its inputs on ``mx.cpu()``, so nothing moves. Returns ``device_of(model)``."""
    return device_of(model)


def to_native(x: np.ndarray, dtype: str = "float32") -> mx.nd.NDArray:
    """An NCHW NumPy array as a native tensor of ``dtype`` (NCHW: no transposition)."""
    return mx.nd.array(np.ascontiguousarray(x, dtype=dtype), dtype=dtype)


def to_numpy(y: mx.nd.NDArray) -> np.ndarray:
    """A native tensor as a NumPy array in NCHW order."""
    return y.asnumpy()


def _has_data(param: gluon.Parameter) -> bool:
    """True once a parameter holds an array; False while uninitialized or waiting for its input size."""
    try:
        param.data()
    except RuntimeError:  # not initialized, or DeferredInitializationError (an MXNetError, a RuntimeError)
        return False
    return True


def is_built(model: nn.HybridBlock) -> bool:
    """True once every lazy layer knows its input size and has its weights."""
    return all(_has_data(p) for p in model.collect_params().values())


def _initialize(model: nn.HybridBlock) -> None:
    """Give every parameter not yet initialized an initializer, as the book's ``net.initialize(init.Xavier())``.

    Gluon creates the arrays at the first call, once the input size is known (deferred initialization).
    """
    for param in model.collect_params().values():
        try:
            param.list_ctx()  # raises while the parameter has no initializer at all
        except RuntimeError:
            # default_init: a layer's own initializer (zeros for biases, ones for BN scales) takes precedence.
            param.initialize(default_init=mx.init.Xavier())


def build(model: nn.HybridBlock, input_shape: tuple[int, ...]) -> None:
    """Create the weights of a model's lazy layers for an NCHW input shape (a no-op once built)."""
    if not is_built(model):
        _initialize(model)
        apply(model, mx.nd.zeros(input_shape, dtype=dtype_of(model)), training=False)


def apply(model: nn.HybridBlock, x: mx.nd.NDArray, training: bool) -> mx.nd.NDArray:
    """Run the model; in training mode BatchNorm uses batch statistics and updates its running averages.

    MXNet updates the running averages in the backward pass, not the forward: in training mode this records
    the forward and runs a backward with a zero output gradient, as a training step would. That backward
    writes all-zero parameter gradients (and adds zero where ``grad_req`` is ``'add'``), so nothing leaks
    into a later training step.
    """
    if not training:
        with autograd.pause(train_mode=False):  # no recording, BatchNorm with its running averages
            return model(x)
    y = _recorded_training_forward(model, x)
    y.backward(mx.nd.zeros_like(y))
    return y


def _recorded_training_forward(model: nn.HybridBlock, x: mx.nd.NDArray) -> mx.nd.NDArray:
    """The training-mode output, recorded for a backward that reaches every BatchNorm.

    MXNet's backward skips layers that lead to no gradient, and with them their running-average updates:
    where parameters are frozen (``grad_req='null'``) the statistics would stay, and with all frozen the
    backward fails. A gradient buffer on (a copy of) the input puts every layer on a gradient's path.
    """
    x = x.copy()
    x.attach_grad()
    with autograd.record(train_mode=True):
        return model(x)


def part_outputs(model: nn.HybridBlock, x: mx.nd.NDArray) -> list[tuple[str, mx.nd.NDArray]]:
    """(name, output) of each top-level part of a ResNet in inference mode; one entry for a block."""
    if not isinstance(model, ResNet):
        return [(type(model).__name__, apply(model, x, training=False))]
    outputs = []
    for name in model.spec.part_names:
        x = apply(getattr(model.net, name), x, training=False)
        outputs.append((name, x))
    return outputs


def trainable_count(model: nn.HybridBlock) -> int:
    """Number of trainable parameters (BatchNorm running statistics are parameters with ``grad_req='null'``)."""
    return sum(int(np.prod(p.shape)) for p in model.collect_params().values() if p.grad_req != "null")


#: Canonical tensor name -> attribute of the Gluon layer that holds it, for each kind of layer.
_NATIVE_NAMES: dict[type, dict[str, str]] = {
    ConvSpec: {"weight": "weight", "bias": "bias"},
    BatchNormSpec: {"weight": "gamma", "bias": "beta", "running_mean": "running_mean", "running_var": "running_var"},
    DenseSpec: {"weight": "weight", "bias": "bias"},
}
#: Canonical names of the BatchNorm statistics: Gluon parameters, but not weights (torch's buffers).
_STATISTICS = ("running_mean", "running_var")


def _native_items(model: nn.HybridBlock) -> dict[str, gluon.Parameter]:
    """Canonical name -> native parameter, found by walking the blocks by their canonical names.

    Gluon's own parameter names carry automatic prefixes (``conv0_weight``...) that depend on how many
    layers the process has created; they are never parsed. Gluon's layouts (OIHW kernels, (out, in) dense
    weights) are the canonical ones.
    """
    layers: list[tuple[str, nn.HybridBlock, LayerSpec]] = []  # (canonical prefix, native layer, description)

    def add(prefix: str, parent: nn.HybridBlock, described: dict[str, LayerSpec]) -> None:
        # a dotted name (downsample.conv) is a child of a child
        for name, layer in described.items():
            layers.append((prefix + name, functools.reduce(getattr, name.split("."), parent), layer))

    if isinstance(model, ResNet):
        add("b1.", model.net.b1, model.spec.stem.layers())
        for stage_name, blocks in model.spec.stages:
            stage = getattr(model.net, stage_name)
            for index, block in enumerate(blocks):
                add(f"{stage_name}.{index}.", stage[index], block.layers())
        add("last.", model.net.last, model.spec.head.layers())
    else:
        add("", model, model.spec.layers())
    items = {}
    for prefix, native, layer in layers:
        for canonical, attribute in _NATIVE_NAMES[type(layer)].items():
            param = getattr(native, attribute)
            if param is not None:  # a convolution without bias has bias None
                items[f"{prefix}.{canonical}"] = param
    return items


def get_arrays(model: nn.HybridBlock) -> dict[str, np.ndarray]:
    """Every weight and BatchNorm statistic as canonical name -> array in canonical layout, in the model's
    precision."""
    return {name: param.data().asnumpy() for name, param in _native_items(model).items()}


def set_arrays(model: nn.HybridBlock, arrays: dict[str, np.ndarray]) -> None:
    """Assign canonical arrays (already checked against ``get_arrays``) to the model's tensors, in the model's
    precision."""
    native = _native_items(model)
    for name, value in arrays.items():
        # set_data copies into the existing arrays, which a hybridized model's cached graph reads.
        native[name].set_data(to_native(value, native[name].dtype))


def _native_grads(model: nn.HybridBlock) -> dict[str, np.ndarray]:
    """Canonical name -> gradient of each trainable tensor, in canonical layout."""
    return {
        name: np.zeros(p.shape, p.dtype) if p.grad_req == "null" else p.grad().asnumpy()
        for name, p in _native_items(model).items()
        if not name.endswith(_STATISTICS)
    }


def vjp(model: nn.HybridBlock, x: np.ndarray, output_grad: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Training-mode output for an NCHW batch and the gradients of ``sum(output * output_grad)``.

    Gradients come back by canonical name in canonical layout. BatchNorm updates its running averages as
    in a training step.
    """
    build(model, x.shape)
    dtype = dtype_of(model)
    # Not apply(training=True): its own zero-gradient backward would update the running averages twice.
    y = _recorded_training_forward(model, to_native(x, dtype))
    y.backward(to_native(output_grad, dtype))  # grad_req 'write': overwrites any earlier gradient
    return to_numpy(y), _native_grads(model)


def make_train_step(
    model: nn.HybridBlock, lr: float, compile: bool = False, mixed_precision: bool = False
) -> Callable[..., float | Callable[[], float]]:
    """A function taking one plain SGD step (the book's optimizer) on the mean softmax cross-entropy of an
    NCHW batch and its integer labels, with BatchNorm in training mode; it returns the loss. With
    ``wait=False`` it returns at once a function that waits for the step and gives its loss, so that a loop
    can prepare the next batch while the framework computes (what ``resnet.training.fit`` does).

    ``compile`` and ``mixed_precision`` are accepted so that every backend takes the same call; this backend's
    step is always compiled, and mixed precision is for the GPU backends (``resnet.specs.MIXED_PRECISION_BACKENDS``).
    """
    dtype = specs.check_mixed_precision(dtype_of(model), mixed_precision, NAME)
    model.hybridize()  # the framework's fast path: one cached graph per input shape
    _initialize(model)  # the trainer needs initializers; the arrays may still wait for the first batch
    trainer = gluon.Trainer(model.collect_params(), "sgd", {"learning_rate": lr})
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()

    def train_step(x: np.ndarray, labels: np.ndarray, wait: bool = True) -> float | Callable[[], float]:
        with autograd.record(train_mode=True):
            loss = loss_fn(model(to_native(x, dtype)), to_native(labels, dtype))  # one loss per example
        loss.backward()  # gradient of the sum ...
        trainer.step(x.shape[0])  # ... divided by the batch size: lr * gradient of the mean
        loss = loss.mean()
        return float(loss.asscalar()) if wait else lambda: float(loss.asscalar())

    return train_step


def make_predict(model: nn.HybridBlock, mixed_precision: bool = False) -> Callable[[np.ndarray], np.ndarray]:
    """A function returning the model's inference-mode outputs (NumPy, in the model's precision) for an NCHW
    NumPy batch; ``mixed_precision`` as in ``make_train_step``."""
    model.hybridize()  # the framework's fast path, as in make_train_step

    dtype = specs.check_mixed_precision(dtype_of(model), mixed_precision, NAME)

    def predict(x: np.ndarray) -> np.ndarray:
        return to_numpy(apply(model, to_native(x, dtype), training=False))

    return predict
