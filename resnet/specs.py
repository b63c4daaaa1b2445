"""The architecture as data: validated descriptions of every layer, block and model, shared by all backends.

Each backend builds its native layers from these descriptions, the NumPy reference runs them, and the
weights files take their canonical tensor names from them. A block description lists its layers by
canonical name (``conv1``, ``bn1``, ...) in the order the book defines them; a model description lists its
top-level parts by the book's names (``b1`` the stem, ``b2``... the stages, ``last`` the head).

Numerical conventions (the same in every backend, so that the same weights give the same numbers):

* padding is explicit and symmetric (``padding=1`` for 3x3, ``3`` for the 7x7 stem), never ``'same'``;
* BatchNorm uses ``BN_EPSILON`` and updates its running averages as
  ``running = (1 - BN_MOMENTUM) * running + BN_MOMENTUM * batch_statistic`` with the *biased* batch
  variance (Keras, Flax and MXNet do this natively; PyTorch's own BatchNorm uses the unbiased variance
  for the running average, so the torch backend corrects it).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Iterator, Sequence, Union

__all__ = [
    "BN_EPSILON",
    "BN_MOMENTUM",
    "BatchNormSpec",
    "BlockSpec",
    "ConvSpec",
    "DenseSpec",
    "HeadSpec",
    "ModelSpec",
    "PoolSpec",
    "RESNET18_ARCH",
    "ResNeXtSpec",
    "ResidualSpec",
    "StemSpec",
    "book_resnet",
    "book_stage",
    "check_block_input",
    "residual",
    "resnext",
]

#: BatchNorm epsilon used by every backend (PyTorch's, Flax's and Gluon's default; Keras' is 1e-3).
BN_EPSILON = 1e-5
#: Weight of the new batch statistic in the running averages (PyTorch's convention; Keras, Flax and Gluon
#: take ``1 - BN_MOMENTUM`` as their ``momentum``).
BN_MOMENTUM = 0.1

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


BlockSpec = Union[ResidualSpec, ResNeXtSpec]


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


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def check_block_input(spec: BlockSpec, in_channels: int) -> None:
    """Raise ValueError when a block without a 1x1 shortcut gets an input it cannot add to its output."""
    if spec.use_1x1conv:
        return
    if in_channels != spec.num_channels or spec.strides != 1:
        name = type(spec).__name__.replace("Spec", "")
        raise ValueError(
            f"this {name} block has an identity shortcut, so its input must already have its output shape: "
            f"{in_channels} input channels and strides={spec.strides}, but num_channels={spec.num_channels}. "
            "Pass use_1x1conv=True to add a 1x1 convolution on the shortcut, or feed "
            f"{spec.num_channels} channels with strides=1."
        )


# ------------------------------------------------------------------------------------------- models


@dataclass(frozen=True)
class StemSpec:
    """The book's ``b1``: 7x7 convolution (stride 2), BatchNorm, ReLU, 3x3 max pooling (stride 2)."""

    channels: int = 64
    conv_bias: bool = True

    @property
    def pool(self) -> PoolSpec:
        """The max pooling at the end of the stem."""
        return PoolSpec(3, 2, 1)

    def layers(self, in_channels: int | None = None) -> dict[str, LayerSpec]:
        """Canonical name -> layer."""
        return {
            "conv": ConvSpec(self.channels, 7, 2, 3, bias=self.conv_bias, in_channels=in_channels),
            "bn": BatchNormSpec(self.channels),
        }


@dataclass(frozen=True)
class HeadSpec:
    """The book's ``last``: global average pooling, flatten, and a dense layer to the classes."""

    num_classes: int

    def layers(self, in_features: int | None = None) -> dict[str, LayerSpec]:
        """Canonical name -> layer."""
        return {"fc": DenseSpec(self.num_classes, in_features)}


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
