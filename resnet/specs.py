"""The architecture as data: validated descriptions of every layer, block and model, shared by all backends.

Each backend builds its native layers from these descriptions, the NumPy reference runs them, and the
weights files take their canonical tensor names from them. A block description lists its layers by
canonical name (``conv1``, ``bn1``, ...) in the order the book defines them; a model description lists its
top-level parts by the book's names (``b1`` the stem, ``b2``... the stages, ``last`` the head).

Besides the chapter's blocks and ResNet, the module describes the whole ResNet family of the chapter's
exercises (``FAMILY``: ResNet-18 to -152, their pre-activation versions, ResNeXt-50 and -101) as data, in
torchvision's convention: no convolution biases before BatchNorm, BatchNorm in the projection shortcut,
and the stride of a bottleneck on its 3x3 convolution ("ResNet v1.5"); the paper's placement, on the first
1x1 convolution, is an option (``stride_in_1x1=True``).

Numerical conventions (the same in every backend, so that the same weights give the same numbers):

* padding is explicit and symmetric (``padding=1`` for 3x3, ``3`` for the 7x7 stem), never ``'same'``;
* BatchNorm uses ``BN_EPSILON`` and updates its running averages as
  ``running = (1 - BN_MOMENTUM) * running + BN_MOMENTUM * batch_statistic`` with the *biased* batch
  variance (Keras, Flax and MXNet do this natively; PyTorch's own BatchNorm uses the unbiased variance
  for the running average, so the torch backend corrects it).
"""

from __future__ import annotations

import numbers
import textwrap
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence, Union

import numpy as np

__all__ = [
    "BLOCK_KINDS",
    "BN_EPSILON",
    "BN_MOMENTUM",
    "BasicSpec",
    "BatchNormSpec",
    "BlockSpec",
    "BottleneckSpec",
    "ConvSpec",
    "DenseSpec",
    "FAMILY",
    "FamilyModel",
    "HeadSpec",
    "MIXED_PRECISION_BACKENDS",
    "ModelSpec",
    "PoolSpec",
    "RESNET18_ARCH",
    "ResNeXtSpec",
    "ResidualSpec",
    "StemSpec",
    "basic",
    "book_resnet",
    "book_stage",
    "bottleneck",
    "check_block_input",
    "check_model_input",
    "check_dtype",
    "check_mixed_precision",
    "family_spec",
    "model_spec",
    "residual",
    "resnet_spec",
    "resnext",
]

#: BatchNorm epsilon used by every backend (PyTorch's, Flax's and Gluon's default; Keras' is 1e-3).
BN_EPSILON = 1e-5
#: Weight of the new batch statistic in the running averages (PyTorch's convention; Keras, Flax and Gluon
#: take ``1 - BN_MOMENTUM`` as their ``momentum``).
BN_MOMENTUM = 0.1

#: The floating-point precisions a model can compute in: float32 (the default, as in the book) and float64, in
#: which every backend follows the NumPy reference's float64 path step for step (float32 rounding flips ReLU and
#: max-pooling decisions, so float32 runs drift apart after a few training steps whatever the implementation).
DTYPES = ("float32", "float64")

#: The book's ResNet-18: (number of residual blocks, channels) for each of the four stages.
RESNET18_ARCH: tuple[tuple[int, int], ...] = ((2, 64), (2, 128), (2, 256), (2, 512))


# ---------------------------------------------------------------------------------------------- layers


@dataclass(frozen=True)
class ConvSpec:
    """A 2-D convolution with symmetric zero padding. ``in_channels`` is None until the input is known."""

    out_channels: int
    kernel: int
    stride: int = 1
    padding: int = 0
    groups: int = 1
    bias: bool = True
    in_channels: int | None = None

    def weight_shape(self) -> tuple[int, int, int, int]:
        """The canonical (OIHW) kernel shape; needs ``in_channels``."""
        if self.in_channels is None:
            raise ValueError("the kernel shape needs in_channels, which is known only once the input is")
        return (self.out_channels, self.in_channels // self.groups, self.kernel, self.kernel)


@dataclass(frozen=True)
class BatchNormSpec:
    """Batch normalization over the channel axis, with ``BN_EPSILON`` and ``BN_MOMENTUM``."""

    num_features: int | None = None


@dataclass(frozen=True)
class DenseSpec:
    """A fully connected layer; canonical weight layout is (out, in)."""

    out_features: int
    in_features: int | None = None


@dataclass(frozen=True)
class PoolSpec:
    """Max pooling with symmetric padding (padded cells never win: they count as minus infinity)."""

    kernel: int
    stride: int
    padding: int


LayerSpec = Union[ConvSpec, BatchNormSpec, DenseSpec]


# ------------------------------------------------------------------------------------------ validation


def _positive_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def _stride(value: object) -> int:
    """Accept an int or the book's JAX spelling ``(s, s)``; strides must be 1 or 2 in these blocks."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2 or value[0] != value[1]:
            raise ValueError(f"strides must be an int or a pair of equal ints such as (2, 2), got {value!r}")
        value = value[0]
    stride = _positive_int(value, "strides")
    if stride not in (1, 2):
        raise ValueError(f"strides must be 1 or 2 (the only strides a ResNet block uses), got {stride}")
    return stride


def _flag(value: object, what: str) -> bool:
    if not isinstance(value, (bool, int)) or value not in (0, 1):
        raise ValueError(f"{what} must be True or False, got {value!r}")
    return bool(value)


# ------------------------------------------------------------------------------------------- blocks


@dataclass(frozen=True)
class ResidualSpec:
    """The chapter's residual block: two 3x3 convolutions, and a 1x1 convolution on the shortcut if asked."""

    num_channels: int
    use_1x1conv: bool = False
    strides: int = 1

    kind = "residual"
    #: The layer on the shortcut (when ``use_1x1conv``): it reads the block's input, not the main path.
    shortcut = "conv3"

    def layers(self, in_channels: int | None = None) -> dict[str, LayerSpec]:
        """Canonical name -> layer, in the book's order; input channels filled in when ``in_channels`` is."""
        c = self.num_channels
        layers: dict[str, LayerSpec] = {
            "conv1": ConvSpec(c, 3, self.strides, 1, in_channels=in_channels),
            "conv2": ConvSpec(c, 3, 1, 1, in_channels=c if in_channels else None),
        }
        if self.use_1x1conv:
            layers["conv3"] = ConvSpec(c, 1, self.strides, 0, in_channels=in_channels)
        layers["bn1"] = BatchNormSpec(c)
        layers["bn2"] = BatchNormSpec(c)
        return layers


@dataclass(frozen=True)
class ResNeXtSpec:
    """The chapter's ResNeXt block: 1x1, grouped 3x3 with ``groups`` groups (the cardinality), 1x1."""

    num_channels: int
    groups: int
    bot_mul: float
    use_1x1conv: bool = False
    strides: int = 1

    kind = "resnext"
    #: The layer on the shortcut (when ``use_1x1conv``): it reads the block's input, not the main path.
    shortcut = "conv4"

    @property
    def bot_channels(self) -> int:
        """Channels of the bottleneck (the grouped convolution's width), as the book rounds them."""
        return int(round(self.num_channels * self.bot_mul))

    @property
    def group_width(self) -> int:
        """Channels in each group of the 3x3 convolution."""
        return self.bot_channels // self.groups

    def layers(self, in_channels: int | None = None) -> dict[str, LayerSpec]:
        """Canonical name -> layer, in the book's order; input channels filled in when ``in_channels`` is."""
        b, c, known = self.bot_channels, self.num_channels, in_channels is not None
        layers: dict[str, LayerSpec] = {
            "conv1": ConvSpec(b, 1, 1, 0, in_channels=in_channels),
            "conv2": ConvSpec(b, 3, self.strides, 1, groups=self.groups, in_channels=b if known else None),
            "conv3": ConvSpec(c, 1, 1, 0, in_channels=b if known else None),
            "bn1": BatchNormSpec(b),
            "bn2": BatchNormSpec(b),
            "bn3": BatchNormSpec(c),
        }
        if self.use_1x1conv:
            layers["conv4"] = ConvSpec(c, 1, self.strides, 0, in_channels=in_channels)
            layers["bn4"] = BatchNormSpec(c)
        return layers


#: Expansion of a bottleneck block: its output has 4 times the channels of its ``planes`` (torchvision's
#: ``Bottleneck.expansion``).
EXPANSION = 4


@dataclass(frozen=True)
class BasicSpec:
    """The basic block of the ImageNet ResNets (ResNet-18 and -34), in torchvision's convention: 3x3 conv,
    BN, ReLU, 3x3 conv, BN, plus the shortcut, then ReLU; no convolution biases, and a projection shortcut
    ``downsample`` of a 1x1 convolution *and* BN. It differs from the chapter's ``Residual`` only there.

    ``preact=True`` is the pre-activation block of ResNet v2 (He et al. 2016, "Identity Mappings in Deep
    Residual Networks"): BN, ReLU, 3x3 conv, BN, ReLU, 3x3 conv, plus the shortcut, with nothing after the
    addition. Its projection shortcut is a bare 1x1 convolution reading the pre-activated input
    ``relu(bn1(x))``; the identity shortcut reads ``x`` itself.
    """

    num_channels: int
    use_1x1conv: bool = False
    strides: int = 1
    preact: bool = False

    #: The projection shortcut's layers are ``downsample.conv`` (and ``downsample.bn``); they read the block's
    #: input (pre-activated, in a pre-activation block), not the main path.
    shortcut = "downsample.conv"

    @property
    def kind(self) -> str:
        """``"basic"`` or ``"preact_basic"``."""
        return "preact_basic" if self.preact else "basic"

    def layers(self, in_channels: int | None = None) -> dict[str, LayerSpec]:
        """Canonical name -> layer, in the order they run; input channels filled in when ``in_channels`` is."""
        c, known = self.num_channels, in_channels is not None
        conv1 = ConvSpec(c, 3, self.strides, 1, bias=False, in_channels=in_channels)
        conv2 = ConvSpec(c, 3, 1, 1, bias=False, in_channels=c if known else None)
        if self.preact:
            layers: dict[str, LayerSpec] = {
                "bn1": BatchNormSpec(in_channels), "conv1": conv1, "bn2": BatchNormSpec(c), "conv2": conv2,
            }
        else:
            layers = {"conv1": conv1, "bn1": BatchNormSpec(c), "conv2": conv2, "bn2": BatchNormSpec(c)}
        layers.update(_downsample(self, in_channels))
        return layers


@dataclass(frozen=True)
class BottleneckSpec:
    """The bottleneck block of ResNet-50/101/152 and ResNeXt, in torchvision's convention: 1x1 conv, BN,
    ReLU, 3x3 conv (grouped for ResNeXt), BN, ReLU, 1x1 conv, BN, plus the shortcut, then ReLU. The output
    has ``EXPANSION * planes`` channels; the inner convolutions have ``width = int(planes * base_width / 64)
    * groups`` (torchvision's rule: ``planes`` for ResNet, 2 * ``planes`` for ResNeXt-50 32x4d). No
    convolution biases; the projection shortcut ``downsample`` is a 1x1 convolution and BN.

    The stride sits on the 3x3 convolution, as in torchvision ("ResNet v1.5"); ``stride_in_1x1=True`` puts
    it on the first 1x1 convolution as the ResNet paper (and Keras' ResNet50) does, which costs fewer
    multiply-adds and is slightly less accurate.

    ``preact=True`` is the pre-activation bottleneck of ResNet v2: BN, ReLU, 1x1 conv, BN, ReLU, 3x3 conv,
    BN, ReLU, 1x1 conv, plus the shortcut (a bare 1x1 convolution reading the pre-activated input, as in
    ``BasicSpec``), with nothing after the addition.
    """

    planes: int
    use_1x1conv: bool = False
    strides: int = 1
    groups: int = 1
    base_width: int = 64
    stride_in_1x1: bool = False
    preact: bool = False

    shortcut = "downsample.conv"

    @property
    def kind(self) -> str:
        """``"bottleneck"`` or ``"preact_bottleneck"``."""
        return "preact_bottleneck" if self.preact else "bottleneck"

    @property
    def num_channels(self) -> int:
        """Output channels: ``EXPANSION * planes``."""
        return EXPANSION * self.planes

    @property
    def width(self) -> int:
        """Channels of the inner (1x1 and 3x3) convolutions."""
        return int(self.planes * self.base_width / 64) * self.groups

    def layers(self, in_channels: int | None = None) -> dict[str, LayerSpec]:
        """Canonical name -> layer, in the order they run; input channels filled in when ``in_channels`` is."""
        b, c, known = self.width, self.num_channels, in_channels is not None
        s1, s3 = (self.strides, 1) if self.stride_in_1x1 else (1, self.strides)
        conv1 = ConvSpec(b, 1, s1, 0, bias=False, in_channels=in_channels)
        conv2 = ConvSpec(b, 3, s3, 1, groups=self.groups, bias=False, in_channels=b if known else None)
        conv3 = ConvSpec(c, 1, 1, 0, bias=False, in_channels=b if known else None)
        if self.preact:
            layers: dict[str, LayerSpec] = {
                "bn1": BatchNormSpec(in_channels), "conv1": conv1, "bn2": BatchNormSpec(b), "conv2": conv2,
                "bn3": BatchNormSpec(b), "conv3": conv3,
            }
        else:
            layers = {
                "conv1": conv1, "bn1": BatchNormSpec(b), "conv2": conv2, "bn2": BatchNormSpec(b),
                "conv3": conv3, "bn3": BatchNormSpec(c),
            }
        layers.update(_downsample(self, in_channels))
        return layers


def _downsample(spec: "BasicSpec | BottleneckSpec", in_channels: int | None) -> dict[str, LayerSpec]:
    """The projection shortcut's layers, if the block has one: a 1x1 convolution with the block's stride,
    followed by BN except in a pre-activation block."""
    if not spec.use_1x1conv:
        return {}
    c = spec.num_channels
    layers: dict[str, LayerSpec] = {
        "downsample.conv": ConvSpec(c, 1, spec.strides, 0, bias=False, in_channels=in_channels)
    }
    if not spec.preact:
        layers["downsample.bn"] = BatchNormSpec(c)
    return layers


BlockSpec = Union[ResidualSpec, ResNeXtSpec, BasicSpec, BottleneckSpec]

#: The kinds of block the family's models are made of.
BLOCK_KINDS = ("basic", "bottleneck", "preact_basic", "preact_bottleneck")


def residual(num_channels: int, use_1x1conv: bool = False, strides: int | Sequence[int] = 1) -> ResidualSpec:
    """Validate the arguments of ``Residual`` and describe the block."""
    return ResidualSpec(
        _positive_int(num_channels, "num_channels"), _flag(use_1x1conv, "use_1x1conv"), _stride(strides)
    )


def resnext(
    num_channels: int,
    groups: int,
    bot_mul: float,
    use_1x1conv: bool = False,
    strides: int | Sequence[int] = 1,
) -> ResNeXtSpec:
    """Validate the arguments of ``ResNeXtBlock`` and describe the block.

    ``groups`` is the number of groups (the cardinality), as in the chapter's text and the ResNeXt paper.
    The book's code passes ``bot_channels // groups`` to the convolution instead, so its ``groups`` acts as
    the width of each group: the book's ``ResNeXtBlock(32, 16, 1)`` has 2 groups of 16 channels, which is
    ``ResNeXtBlock(32, 2, 1)`` here.
    """
    num_channels = _positive_int(num_channels, "num_channels")
    groups = _positive_int(groups, "groups")
    if isinstance(bot_mul, bool) or not isinstance(bot_mul, numbers.Real) or not bot_mul > 0:
        raise ValueError(f"bot_mul must be a positive number, got {bot_mul!r}")
    spec = ResNeXtSpec(num_channels, groups, float(bot_mul), _flag(use_1x1conv, "use_1x1conv"), _stride(strides))
    bot = spec.bot_channels
    if bot < 1:
        raise ValueError(
            f"bot_mul={bot_mul} gives {bot} bottleneck channels for num_channels={num_channels}; "
            "choose bot_mul so that round(num_channels * bot_mul) >= 1"
        )
    if bot % groups:
        raise ValueError(
            f"the bottleneck has {bot} channels (num_channels={num_channels} * bot_mul={bot_mul}), which is not "
            f"divisible by groups={groups}. groups is the number of groups (cardinality); choose a divisor of {bot}, "
            f"e.g. {', '.join(str(d) for d in _divisors(bot)[:6])}. (The book's code passes bot_channels // groups: "
            f"its ResNeXtBlock(c, w, m) is ResNeXtBlock(c, round(c * m) // w, m) here.)"
        )
    return spec


def basic(
    num_channels: int, use_1x1conv: bool = False, strides: int | Sequence[int] = 1, preact: bool = False
) -> BasicSpec:
    """Validate the arguments of ``BasicBlock`` (``PreActBasic`` with ``preact=True``) and describe the block."""
    return BasicSpec(
        _positive_int(num_channels, "num_channels"), _flag(use_1x1conv, "use_1x1conv"), _stride(strides),
        _flag(preact, "preact"),
    )


def bottleneck(
    planes: int,
    use_1x1conv: bool = False,
    strides: int | Sequence[int] = 1,
    groups: int = 1,
    base_width: int = 64,
    stride_in_1x1: bool = False,
    preact: bool = False,
) -> BottleneckSpec:
    """Validate the arguments of ``Bottleneck`` (``PreActBottleneck`` with ``preact=True``) and describe the
    block. ``groups`` is the number of groups (cardinality) of the 3x3 convolution and ``base_width`` the
    channels of each group at ``planes=64`` (torchvision's ``width_per_group``): ResNeXt-50 32x4d is
    ``groups=32, base_width=4``."""
    spec = BottleneckSpec(
        _positive_int(planes, "planes"),
        _flag(use_1x1conv, "use_1x1conv"),
        _stride(strides),
        _positive_int(groups, "groups"),
        _positive_int(base_width, "base_width"),
        _flag(stride_in_1x1, "stride_in_1x1"),
        _flag(preact, "preact"),
    )
    if spec.width < 1:
        raise ValueError(
            f"planes={planes} with base_width={base_width} gives int({planes} * {base_width} / 64) = 0 channels per "
            "group; use a larger planes or base_width"
        )
    return spec


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


_BLOCK_NAMES = {
    "residual": "Residual", "resnext": "ResNeXt", "basic": "BasicBlock", "bottleneck": "Bottleneck",
    "preact_basic": "PreActBasic", "preact_bottleneck": "PreActBottleneck",
}


def check_block_input(spec: BlockSpec, in_channels: int) -> None:
    """Raise ValueError when a block without a 1x1 shortcut gets an input it cannot add to its output."""
    if spec.use_1x1conv:
        return
    if in_channels != spec.num_channels or spec.strides != 1:
        name = _BLOCK_NAMES[spec.kind]
        raise ValueError(
            f"this {name} block has an identity shortcut, so its input must already have its output shape: "
            f"{in_channels} input channels and strides={spec.strides}, but num_channels={spec.num_channels}. "
            "Pass use_1x1conv=True to add a 1x1 convolution on the shortcut, or feed "
            f"{spec.num_channels} channels with strides=1."
        )


# ------------------------------------------------------------------------------------------- models


@dataclass(frozen=True)
class StemSpec:
    """The book's ``b1``: 7x7 convolution (stride 2), BatchNorm, ReLU, 3x3 max pooling (stride 2).

    ``in_channels`` None (the book's models) takes whatever channels the first input has; the family's
    models fix it, and an input with other channels is a ValueError.
    """

    channels: int = 64
    conv_bias: bool = True
    in_channels: int | None = None

    @property
    def pool(self) -> PoolSpec:
        """The max pooling at the end of the stem."""
        return PoolSpec(3, 2, 1)

    def layers(self, in_channels: int | None = None) -> dict[str, LayerSpec]:
        """Canonical name -> layer."""
        return {
            "conv": ConvSpec(self.channels, 7, 2, 3, bias=self.conv_bias, in_channels=in_channels or self.in_channels),
            "bn": BatchNormSpec(self.channels),
        }


@dataclass(frozen=True)
class HeadSpec:
    """The book's ``last``: global average pooling, flatten, and a dense layer to the classes.

    ``preact=True`` (the pre-activation models) starts it with the final BN and ReLU of ResNet v2, which
    the last block's addition leaves unnormalized: BN, ReLU, global average pooling, dense.
    """

    num_classes: int
    preact: bool = False

    def layers(self, in_features: int | None = None) -> dict[str, LayerSpec]:
        """Canonical name -> layer."""
        fc: dict[str, LayerSpec] = {"fc": DenseSpec(self.num_classes, in_features)}
        return {"bn": BatchNormSpec(in_features), **fc} if self.preact else fc


@dataclass(frozen=True)
class ModelSpec:
    """A whole network: the stem ``b1``, named stages of blocks, and the head ``last``."""

    stem: StemSpec
    stages: tuple[tuple[str, tuple[BlockSpec, ...]], ...]
    head: HeadSpec

    @property
    def part_names(self) -> tuple[str, ...]:
        """The top-level parts in order, as the layer summary lists them."""
        return ("b1", *(name for name, _ in self.stages), "last")

    def blocks(self) -> Iterator[tuple[str, BlockSpec]]:
        """(canonical prefix, block) for every block, e.g. ("b2.0", ResidualSpec(...))."""
        for stage_name, blocks in self.stages:
            for index, block in enumerate(blocks):
                yield f"{stage_name}.{index}", block


def model_spec(
    arch: Sequence[Sequence[int]] | None = None, num_classes: int = 10, spec: ModelSpec | None = None
) -> ModelSpec:
    """The description a backend's ``ResNet(arch, num_classes, spec=...)`` builds: the book's ``ResNet(arch)``
    when ``spec`` is None, else ``spec`` (the family's builders pass one). Both may be given only if they agree."""
    if spec is None:
        return book_resnet(arch, num_classes)  # type: ignore[arg-type]
    if not isinstance(spec, ModelSpec):
        raise ValueError(
            f"spec must be a resnet.specs.ModelSpec, e.g. resnet.specs.family_spec('resnet50'); got {spec!r}"
        )
    if arch is not None and book_resnet(arch, num_classes) != spec:
        raise ValueError("give arch (the book's ResNet) or spec (any ModelSpec), not both")
    return spec


def check_dtype(dtype: object) -> str:
    """The model precision ``dtype`` as one of ``DTYPES`` (NumPy dtypes and their names are accepted)."""
    try:
        name = None if dtype is None else np.dtype(dtype).name  # type: ignore[call-overload]
    except TypeError:
        name = None
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)} (or the NumPy dtype); got {dtype!r}. "
                         "Use float32 for speed, float64 to follow the NumPy reference exactly.")
    return name


#: The backends whose train steps can compute in bfloat16 with float32 weights (``mixed_precision=True``).
#: This project installs TensorFlow and MXNet as CPU builds (tensorflow-cpu, mxnet), where bfloat16 gains nothing.
MIXED_PRECISION_BACKENDS = ("torch", "jax")


def check_mixed_precision(dtype: str, mixed_precision: bool, backend: str) -> str:
    """The model precision ``dtype``, after checking that ``mixed_precision`` (bfloat16 computation, float32
    weights) is a bool that this backend and this model support."""
    if not isinstance(mixed_precision, bool):
        raise TypeError(f"mixed_precision must be True or False, got {mixed_precision!r}")
    if mixed_precision and backend not in MIXED_PRECISION_BACKENDS:
        raise ValueError(
            f"mixed precision (bfloat16) is available in the {' and '.join(MIXED_PRECISION_BACKENDS)} backends, "
            f"not in {backend}, whose build here is CPU-only; train without it, or select one of those backends"
        )
    if mixed_precision and dtype != "float32":
        raise ValueError(
            f"mixed precision computes in bfloat16 with float32 weights, but this model is {dtype}; build it with "
            "dtype='float32', or train without mixed precision"
        )
    return dtype


def book_stage(num_residuals: int, num_channels: int, first_block: bool = False) -> tuple[ResidualSpec, ...]:
    """The book's ``ResNet.block``: the first block halves the size and changes channels, unless first."""
    num_residuals = _positive_int(num_residuals, "num_residuals")
    first_block = _flag(first_block, "first_block")
    return tuple(
        residual(num_channels, use_1x1conv=True, strides=2) if i == 0 and not first_block else residual(num_channels)
        for i in range(num_residuals)
    )


def book_resnet(arch: Sequence[Sequence[int]], num_classes: int = 10) -> ModelSpec:
    """The book's ``ResNet(arch)``: ``arch`` holds one (num_residuals, num_channels) pair per stage."""
    try:
        pairs = [tuple(pair) for pair in arch]
    except TypeError:
        pairs = None
    if not pairs or any(len(pair) != 2 for pair in pairs):
        raise ValueError(
            "arch must be a non-empty sequence of (num_residuals, num_channels) pairs, e.g. "
            f"{RESNET18_ARCH} for ResNet-18; got {arch!r}"
        )
    stages = tuple(
        (f"b{i + 2}", book_stage(n, c, first_block=(i == 0))) for i, (n, c) in enumerate(pairs)
    )
    return ModelSpec(StemSpec(), stages, HeadSpec(_positive_int(num_classes, "num_classes")))


def check_model_input(spec: ModelSpec, in_channels: int) -> None:
    """Raise ValueError when a model made for a number of input channels gets another."""
    expected = spec.stem.in_channels
    if expected is not None and in_channels != expected:
        raise ValueError(
            f"this model was built for {expected} input channels, but the input has {in_channels}; build it "
            f"with in_channels={in_channels} (e.g. resnet50(in_channels={in_channels})) or feed {expected} channels"
        )


# ------------------------------------------------------------------------------------------ the family

#: Channels of the four stages of the ImageNet ResNets (``planes``: a bottleneck stage outputs 4x these).
IMAGENET_WIDTHS = (64, 128, 256, 512)


def resnet_spec(
    block: str,
    depths: Sequence[int],
    widths: Sequence[int] = IMAGENET_WIDTHS,
    num_classes: int = 1000,
    in_channels: int = 3,
    groups: int = 1,
    base_width: int = 64,
    stride_in_1x1: bool = False,
    stem_channels: int = 64,
) -> ModelSpec:
    """An ImageNet-style ResNet as torchvision builds it: the stem (7x7/2 convolution without bias, BN, ReLU,
    3x3/2 max pooling), one stage per entry of ``depths`` (``b2``, ``b3``...) and the head (global average
    pooling, dense; with BN and ReLU first in a pre-activation model).

    Each stage's first block has stride 2 (stride 1 in the first stage) and a projection shortcut when the
    stride or the channels change; the rest have identity shortcuts.

    Args:
        block: one of ``BLOCK_KINDS``: ``"basic"``, ``"bottleneck"``, ``"preact_basic"``, ``"preact_bottleneck"``.
        depths: blocks per stage, e.g. ``(3, 4, 6, 3)``.
        widths: channels (``planes``) per stage; a bottleneck stage outputs ``EXPANSION`` times as many.
        num_classes: outputs of the dense layer.
        in_channels: channels of the input images.
        groups, base_width: the bottleneck's cardinality and per-group width at ``planes=64`` (ResNeXt).
        stride_in_1x1: the paper's stride placement in bottlenecks (torchvision's, on the 3x3, by default).
        stem_channels: output channels of the stem's convolution.
    """
    if block not in BLOCK_KINDS:
        raise ValueError(f"block must be one of {', '.join(BLOCK_KINDS)}; got {block!r}")
    depths = tuple(_positive_int(d, "each stage depth") for d in depths)
    widths = tuple(_positive_int(w, "each stage width") for w in widths)
    if not depths or len(depths) != len(widths):
        raise ValueError(f"depths and widths need one entry per stage, got {len(depths)} and {len(widths)}")
    preact = block.startswith("preact_")
    channels = _positive_int(stem_channels, "stem_channels")
    stages = []
    for index, (depth, width) in enumerate(zip(depths, widths)):
        blocks: list[BlockSpec] = []
        for i in range(depth):
            strides = 2 if i == 0 and index > 0 else 1
            if block.endswith("bottleneck"):
                out = EXPANSION * width
                spec: BlockSpec = bottleneck(
                    width, strides != 1 or channels != out, strides, groups, base_width, stride_in_1x1, preact
                )
            else:
                spec = basic(width, strides != 1 or channels != width, strides, preact)
            blocks.append(spec)
            channels = spec.num_channels
        stages.append((f"b{index + 2}", tuple(blocks)))
    return ModelSpec(
        StemSpec(channels=stem_channels, conv_bias=False, in_channels=_positive_int(in_channels, "in_channels")),
        tuple(stages),
        HeadSpec(_positive_int(num_classes, "num_classes"), preact=preact),
    )


@dataclass(frozen=True)
class FamilyModel:
    """One model of the ResNet family as data: what ``spec()`` needs to describe it, and who defined it.

    ``name`` is the builder's name in every backend (``resnet.resnet50``...) and in ``resnet summary``.
    """

    name: str
    title: str
    block: str
    depths: tuple[int, ...]
    groups: int = 1
    base_width: int = 64
    widths: tuple[int, ...] = IMAGENET_WIDTHS
    source: str = "He et al. 2016, Table 1"

    def spec(self, num_classes: int = 1000, in_channels: int = 3, stride_in_1x1: bool = False) -> ModelSpec:
        """The model's description for ``num_classes`` outputs and ``in_channels`` input channels."""
        return resnet_spec(
            self.block, self.depths, self.widths, num_classes, in_channels, self.groups, self.base_width,
            _flag(stride_in_1x1, "stride_in_1x1"),
        )

    def builder(self, model_class: Callable[..., Any]) -> Callable[..., Any]:
        """This model's builder function (``resnet50()``...) for a backend whose ``ResNet`` is ``model_class``:
        the same name, signature and docstring in every backend."""

        def build(
            num_classes: int = 1000, in_channels: int = 3, stride_in_1x1: bool = False, *, dtype: str = "float32"
        ) -> Any:
            return model_class(spec=self.spec(num_classes, in_channels, stride_in_1x1), dtype=dtype)

        build.__name__ = build.__qualname__ = self.name
        build.__doc__ = self.docstring
        return build

    @property
    def docstring(self) -> str:
        """The builder functions' docstring, the same in every backend."""
        bottleneck = self.block.endswith("bottleneck")
        blocks = "bottleneck blocks" if bottleneck else "basic blocks"
        title = f"{self.title} ({self.source}): {blocks} {{{', '.join(map(str, self.depths))}}}"
        if self.groups > 1:
            title += f" with grouped 3x3 convolutions (cardinality {self.groups}, base width {self.base_width})"
        if self.block.startswith("preact"):
            body = (
                "Pre-activation (ResNet v2): BN and ReLU before each convolution, nothing after the additions, and "
                "a final BN and ReLU before the pooling. Projection shortcuts are bare 1x1 convolutions on the "
                "pre-activated input. No convolution biases."
            )
        else:
            body = "torchvision's convention: no convolution biases, BN in the projection shortcuts."
        if bottleneck:
            body += (
                " The stride of a bottleneck sits on its 3x3 convolution, as in torchvision (\"ResNet v1.5\"); "
                "``stride_in_1x1=True`` puts it on the first 1x1 convolution, as the paper does."
            )
        body += (
            " The stem is a 7x7/2 convolution, BN, ReLU and 3x3/2 max pooling; the head global average pooling and "
            "a dense layer. Parts: ``b1`` (stem), ``b2``-``b5`` (stages), ``last`` (head)."
        )
        args = [
            "num_classes: outputs of the dense layer (ImageNet's 1000 by default).",
            "in_channels: channels of the input images (3 by default).",
            "stride_in_1x1: the paper's stride placement" + (
                " (on the first 1x1 convolution)." if bottleneck else "; no effect on basic blocks."),
            "dtype: \"float32\" (the default) or \"float64\", the precision of the weights and the computation.",
        ]
        wrap = lambda text, indent: textwrap.fill(text, 104, initial_indent=indent, subsequent_indent=indent)  # noqa
        return "\n\n".join(
            [title + ".", wrap(body, "    "), "    Args:\n" + "\n".join(wrap(a, "        ") for a in args)]
        ) + "\n"


def _family() -> dict[str, FamilyModel]:
    v2 = "He et al. 2016, Identity Mappings in Deep Residual Networks"
    resnext = "Xie et al. 2017, Aggregated Residual Transformations"
    depths = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
    models = [
        *(FamilyModel(f"resnet{n}", f"ResNet-{n}", "basic" if n < 50 else "bottleneck", d) for n, d in depths.items()),
        *(
            FamilyModel(f"preact_resnet{n}", f"Pre-activation ResNet-{n}", "preact_basic" if n < 50 else
                        "preact_bottleneck", d, source=v2)
            for n, d in depths.items()
        ),
        FamilyModel("resnext50_32x4d", "ResNeXt-50 (32x4d)", "bottleneck", depths[50], 32, 4, source=resnext),
        FamilyModel("resnext101_32x8d", "ResNeXt-101 (32x8d)", "bottleneck", depths[101], 32, 8, source=resnext),
    ]
    return {model.name: model for model in models}


#: The family by builder name, in the order every backend lists its builders.
FAMILY: dict[str, FamilyModel] = _family()


def family_spec(name: str, num_classes: int = 1000, in_channels: int = 3, stride_in_1x1: bool = False) -> ModelSpec:
    """The description of the family's model ``name`` (e.g. ``"resnet50"``); ValueError listing the names."""
    if name not in FAMILY:
        raise ValueError(f"unknown model {name!r}; the family: {', '.join(FAMILY)}")
    return FAMILY[name].spec(num_classes, in_channels, stride_in_1x1)
