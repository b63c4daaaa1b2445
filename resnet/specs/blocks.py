"""Block descriptions: the chapter's Residual and ResNeXt blocks and the family's basic and bottleneck blocks.

A block description lists its layers by canonical name (``conv1``, ``bn1``, ...) in the order the book
defines them, and knows which native class builds it and with which arguments (``BLOCK_CLASSES``,
``constructor_arguments``), so that every backend builds a block from a description the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from resnet.specs.layers import BatchNormSpec, ConvSpec, LayerSpec
from resnet.specs.validation import MAX_SIZE, divisors, flag, positive_int, positive_number, stride

__all__ = [
    "BLOCK_CLASSES",
    "BLOCK_KINDS",
    "EXPANSION",
    "PROJECTION_ATTRIBUTES",
    "BasicSpec",
    "BlockSpec",
    "BottleneckSpec",
    "ResNeXtSpec",
    "ResidualSpec",
    "basic",
    "bottleneck",
    "build_block",
    "check_block_input",
    "constructor_arguments",
    "residual",
    "resnext",
]


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
                "bn1": BatchNormSpec(in_channels),
                "conv1": conv1,
                "bn2": BatchNormSpec(c),
                "conv2": conv2,
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
                "bn1": BatchNormSpec(in_channels),
                "conv1": conv1,
                "bn2": BatchNormSpec(b),
                "conv2": conv2,
                "bn3": BatchNormSpec(b),
                "conv3": conv3,
            }
        else:
            layers = {
                "conv1": conv1,
                "bn1": BatchNormSpec(b),
                "conv2": conv2,
                "bn2": BatchNormSpec(b),
                "conv3": conv3,
                "bn3": BatchNormSpec(c),
            }
        layers.update(_downsample(self, in_channels))
        return layers


def _downsample(spec: BasicSpec | BottleneckSpec, in_channels: int | None) -> dict[str, LayerSpec]:
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


BlockSpec = ResidualSpec | ResNeXtSpec | BasicSpec | BottleneckSpec

#: The kinds of block the family's models are made of: torchvision's four, and the chapter's ``Residual`` (the
#: multi-GPU section's ResNet-18).
BLOCK_KINDS = ("basic", "bottleneck", "preact_basic", "preact_bottleneck", "residual")


def residual(num_channels: int, use_1x1conv: bool = False, strides: int | Sequence[int] = 1) -> ResidualSpec:
    """Validate the arguments of ``Residual`` and describe the block."""
    return ResidualSpec(positive_int(num_channels, "num_channels"), flag(use_1x1conv, "use_1x1conv"), stride(strides))


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
    num_channels = positive_int(num_channels, "num_channels")
    groups = positive_int(groups, "groups")
    bot_mul = positive_number(bot_mul, "bot_mul")
    if num_channels * bot_mul > MAX_SIZE:  # checked before rounding: a huge product would take forever below
        raise ValueError(
            f"bot_mul={bot_mul} gives {num_channels * bot_mul:.4g} bottleneck channels for "
            f"num_channels={num_channels}, more than {MAX_SIZE} (2**31 - 1); choose a smaller bot_mul"
        )
    spec = ResNeXtSpec(num_channels, groups, bot_mul, flag(use_1x1conv, "use_1x1conv"), stride(strides))
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
            f"e.g. {', '.join(str(d) for d in divisors(bot)[:6])}. (The book's code passes bot_channels // groups: "
            f"its ResNeXtBlock(c, w, m) is ResNeXtBlock(c, round(c * m) // w, m) here.)"
        )
    return spec


def basic(
    num_channels: int, use_1x1conv: bool = False, strides: int | Sequence[int] = 1, preact: bool = False
) -> BasicSpec:
    """Validate the arguments of ``BasicBlock`` (``PreActBasic`` with ``preact=True``) and describe the block."""
    return BasicSpec(
        positive_int(num_channels, "num_channels"),
        flag(use_1x1conv, "use_1x1conv"),
        stride(strides),
        flag(preact, "preact"),
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
        positive_int(planes, "planes"),
        flag(use_1x1conv, "use_1x1conv"),
        stride(strides),
        positive_int(groups, "groups"),
        positive_int(base_width, "base_width"),
        flag(stride_in_1x1, "stride_in_1x1"),
        flag(preact, "preact"),
    )
    if spec.width < 1:
        raise ValueError(
            f"planes={planes} with base_width={base_width} gives int({planes} * {base_width} / 64) = 0 channels per "
            "group; use a larger planes or base_width"
        )
    if max(spec.width, spec.num_channels) > MAX_SIZE:
        raise ValueError(
            f"planes={planes}, groups={groups} and base_width={base_width} give {spec.width} inner and "
            f"{spec.num_channels} output channels, more than {MAX_SIZE} (2**31 - 1); use smaller values"
        )
    return spec


#: Block kind -> the class that builds it, the same name in every backend.
BLOCK_CLASSES: dict[str, str] = {
    "residual": "Residual",
    "resnext": "ResNeXtBlock",
    "basic": "BasicBlock",
    "bottleneck": "Bottleneck",
    "preact_basic": "PreActBasic",
    "preact_bottleneck": "PreActBottleneck",
}

#: Block kind -> the block's attributes that exist only with a projection shortcut (``use_1x1conv``): None
#: without one, so that ``forward`` can test them as the book's ``if self.conv3:`` does.
PROJECTION_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "residual": ("conv3",),
    "resnext": ("conv4", "bn4"),
    "basic": ("downsample",),
    "bottleneck": ("downsample",),
    "preact_basic": ("downsample",),
    "preact_bottleneck": ("downsample",),
}


def constructor_arguments(spec: BlockSpec) -> tuple[Any, ...]:
    """The positional arguments of the block's class (``BLOCK_CLASSES[spec.kind]``) that describe ``spec``."""
    if isinstance(spec, ResidualSpec):
        return (spec.num_channels, spec.use_1x1conv, spec.strides)
    if isinstance(spec, ResNeXtSpec):
        return (spec.num_channels, spec.groups, spec.bot_mul, spec.use_1x1conv, spec.strides)
    if isinstance(spec, BasicSpec):
        return (spec.num_channels, spec.use_1x1conv, spec.strides)
    return (spec.planes, spec.use_1x1conv, spec.strides, spec.groups, spec.base_width, spec.stride_in_1x1)


def build_block(classes: Any, spec: BlockSpec, **options: Any) -> Any:
    """The native block for a description: ``classes`` is a backend's module of block classes, ``options`` any
    framework keyword arguments (a Keras dtype policy, say)."""
    return getattr(classes, BLOCK_CLASSES[spec.kind])(*constructor_arguments(spec), **options)


def check_block_input(spec: BlockSpec, in_channels: int) -> None:
    """Raise ValueError when a block without a 1x1 shortcut gets an input it cannot add to its output."""
    if spec.use_1x1conv:
        return
    if in_channels != spec.num_channels or spec.strides != 1:
        name = BLOCK_CLASSES[spec.kind]
        raise ValueError(
            f"this {name} has an identity shortcut, so its input must already have its output shape: "
            f"{in_channels} input channels and strides={spec.strides}, but num_channels={spec.num_channels}. "
            "Pass use_1x1conv=True to add a 1x1 convolution on the shortcut, or feed "
            f"{spec.num_channels} channels with strides=1."
        )
