"""Model descriptions: the stem ``b1``, named stages of blocks, the head ``last``; the book's ResNet.

A model description lists its top-level parts by the book's names (``b1`` the stem, ``b2``... the stages,
``last`` the head).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields

from resnet.specs.blocks import BlockSpec, ResidualSpec, residual
from resnet.specs.layers import BatchNormSpec, ConvSpec, DenseSpec, LayerSpec, PoolSpec
from resnet.specs.validation import flag, positive_int

__all__ = [
    "DEFAULT_LR",
    "RESNET18_ARCH",
    "HeadSpec",
    "ModelSpec",
    "StemSpec",
    "book_resnet",
    "book_stage",
    "check_model_input",
    "model_spec",
]

#: The learning rate a model keeps when none is given: the book's ``ResNet(arch, lr=0.1, num_classes=10)``.
DEFAULT_LR = 0.1

#: The book's ResNet-18: (number of residual blocks, channels) for each of the four stages.
RESNET18_ARCH: tuple[tuple[int, int], ...] = ((2, 64), (2, 128), (2, 256), (2, 512))


@dataclass(frozen=True)
class StemSpec:
    """The book's ``b1``: a convolution (7x7, stride 2), BatchNorm, ReLU and max pooling (3x3, stride 2).

    ``kernel`` and ``stride`` describe the convolution, padded by ``kernel // 2`` on every side (symmetric, as
    every convolution here); ``max_pool=False`` ends the stem after the ReLU, as the multi-GPU section's ResNet-18
    does (a 3x3 convolution with stride 1 and no pooling: its 28x28 images are too small to shrink 4x at once).
    The defaults are the chapter's stem, which every other model shares.

    ``in_channels`` None (the book's models) takes whatever channels the first input has; the family's
    models fix it, and an input with other channels is a ValueError.

    ``preact=True`` is the stem of the pre-activation models (ResNet v2): the convolution and the max pooling
    alone, no BN or ReLU between them, since every pre-activation block starts with its own BN and ReLU (as in
    He et al.'s code for "Identity Mappings in Deep Residual Networks", timm's ResNetV2 and Keras Hub's
    ``use_pre_activation=True``). Its max pooling then sees negative values: its padded cells are minus
    infinity, as everywhere here.
    """

    channels: int = 64
    conv_bias: bool = True
    in_channels: int | None = None
    kernel: int = 7
    stride: int = 2
    max_pool: bool = True
    preact: bool = False

    def __post_init__(self) -> None:
        # An even kernel cannot be padded symmetrically to keep the size (kernel // 2 on each side).
        if positive_int(self.kernel, "the stem's kernel") % 2 == 0:
            raise ValueError(f"the stem's kernel must be odd (padded by kernel // 2 on each side), got {self.kernel}")
        positive_int(self.stride, "the stem's stride")
        flag(self.max_pool, "max_pool")
        flag(self.preact, "preact")

    def __repr__(self) -> str:
        # preact=False is left out: the description of every stem but the pre-activation one reads as before the
        # field existed, so checkpoints that hold it (resnet train's header, rundir.resume_point) still match.
        shown = [f"{f.name}={getattr(self, f.name)!r}" for f in fields(self) if f.name != "preact" or self.preact]
        return f"StemSpec({', '.join(shown)})"

    @property
    def pool(self) -> PoolSpec | None:
        """The max pooling at the end of the stem (3x3, stride 2, padding 1), or None when it has none."""
        return PoolSpec(3, 2, 1) if self.max_pool else None

    def layers(self, in_channels: int | None = None) -> dict[str, LayerSpec]:
        """Canonical name -> layer: ``conv`` and ``bn`` whatever the kernel or pooling; ``conv`` alone in a
        pre-activation stem."""
        conv = ConvSpec(
            self.channels,
            self.kernel,
            self.stride,
            self.kernel // 2,
            bias=self.conv_bias,
            in_channels=in_channels or self.in_channels,
        )
        return {"conv": conv} if self.preact else {"conv": conv, "bn": BatchNormSpec(self.channels)}

    def describe(self) -> str:
        """The stem in words, e.g. ``"a 7x7/2 convolution, BN, ReLU and 3x3/2 max pooling"``."""
        conv = f"a {self.kernel}x{self.kernel}/{self.stride} convolution"
        pool = self.pool
        if self.preact:
            end = (
                "without max pooling" if pool is None else f"and {pool.kernel}x{pool.kernel}/{pool.stride} max pooling"
            )
            return f"{conv} {end}, no BN or ReLU between them (each block starts with its own)"
        if pool is None:
            return f"{conv}, BN and ReLU, without max pooling"
        return f"{conv}, BN, ReLU and {pool.kernel}x{pool.kernel}/{pool.stride} max pooling"


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


def book_stage(num_residuals: int, num_channels: int, first_block: bool = False) -> tuple[ResidualSpec, ...]:
    """The book's ``ResNet.block``: the first block halves the size and changes channels, unless first."""
    num_residuals = positive_int(num_residuals, "num_residuals")
    first_block = flag(first_block, "first_block")
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
    stages = tuple((f"b{i + 2}", book_stage(n, c, first_block=(i == 0))) for i, (n, c) in enumerate(pairs))
    return ModelSpec(StemSpec(), stages, HeadSpec(positive_int(num_classes, "num_classes")))


def check_model_input(spec: ModelSpec, in_channels: int) -> None:
    """Raise ValueError when a model made for a number of input channels gets another."""
    expected = spec.stem.in_channels
    if expected is not None and in_channels != expected:
        raise ValueError(
            f"this model was built for {expected} input channels, but the input has {in_channels}; build it "
            f"with in_channels={in_channels} (e.g. resnet50(in_channels={in_channels})) or feed {expected} channels"
        )
