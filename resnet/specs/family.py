"""The ResNet family of the chapter's exercises as data: ResNet-18 to -152, their pre-activation versions and
ResNeXt-50 and -101, in torchvision's convention, the book's multi-GPU ResNet-18, and the builder functions every
backend exports.

torchvision's convention: no convolution biases before BatchNorm, BatchNorm in the projection shortcut, and the
stride of a bottleneck on its 3x3 convolution ("ResNet v1.5"); the paper's placement, on the first 1x1
convolution, is an option (``stride_in_1x1=True``). The multi-GPU ResNet-18 (the book's section "Concise
Implementation for Multiple GPUs") is the chapter's ResNet-18, ``Residual`` blocks and all, with a small stem.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from resnet.specs.blocks import BLOCK_KINDS, EXPANSION, BlockSpec, basic, bottleneck, residual
from resnet.specs.models import DEFAULT_LR, HeadSpec, ModelSpec, StemSpec
from resnet.specs.validation import flag, positive_int

__all__ = ["FAMILY", "IMAGENET_WIDTHS", "STEMS", "FamilyModel", "family_builders", "family_spec", "resnet_spec"]


#: Channels of the four stages of the ImageNet ResNets (``planes``: a bottleneck stage outputs 4x these); also
#: the chapter's ResNet-18's (``RESNET18_ARCH``).
IMAGENET_WIDTHS = (64, 128, 256, 512)

#: Stem kind -> the ``StemSpec`` fields of its convolution and pooling (channels, bias and input channels come
#: from the model): ``"imagenet"``, the 7x7/2 convolution and 3x3/2 max pooling of the ImageNet models and the
#: chapter's; ``"small"``, the multi-GPU section's 3x3/1 convolution without pooling, which keeps small images
#: (Fashion-MNIST's 28x28) at full size in the first stage.
STEMS: dict[str, dict[str, Any]] = {
    "imagenet": {"kernel": 7, "stride": 2, "max_pool": True},
    "small": {"kernel": 3, "stride": 1, "max_pool": False},
}


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
    stem: str = "imagenet",
) -> ModelSpec:
    """An ImageNet-style ResNet as torchvision builds it: the stem (7x7/2 convolution without bias, BN, ReLU,
    3x3/2 max pooling; no BN or ReLU in a pre-activation model, as in timm's ResNetV2), one stage per entry of
    ``depths`` (``b2``, ``b3``...) and the head (global average pooling, dense; with BN and ReLU first in a
    pre-activation model). With ``block="residual"``, a ResNet of the
    chapter's ``Residual`` blocks, in the book's convention: convolution biases, the stem's too.

    Each stage's first block has stride 2 (stride 1 in the first stage) and a projection shortcut when the
    stride or the channels change; the rest have identity shortcuts. (For ``Residual`` blocks that is the book's
    ``ResNet.block``, when the stem's channels are the first stage's.)

    Args:
        block: one of ``BLOCK_KINDS``: ``"basic"``, ``"bottleneck"``, ``"preact_basic"``, ``"preact_bottleneck"``,
            or ``"residual"`` (the chapter's block).
        depths: blocks per stage, e.g. ``(3, 4, 6, 3)``.
        widths: channels (``planes``) per stage; a bottleneck stage outputs ``EXPANSION`` times as many.
        num_classes: outputs of the dense layer.
        in_channels: channels of the input images.
        groups, base_width: the bottleneck's cardinality and per-group width at ``planes=64`` (ResNeXt).
        stride_in_1x1: the paper's stride placement in bottlenecks (torchvision's, on the 3x3, by default).
        stem_channels: output channels of the stem's convolution.
        stem: one of ``STEMS``: ``"imagenet"`` (7x7/2 convolution, 3x3/2 max pooling) or ``"small"`` (3x3/1
            convolution, no pooling).
    """
    if block not in BLOCK_KINDS:
        raise ValueError(f"block must be one of {', '.join(BLOCK_KINDS)}; got {block!r}")
    if stem not in STEMS:
        raise ValueError(f"stem must be one of {', '.join(STEMS)}; got {stem!r}")
    depths = tuple(positive_int(d, "each stage depth") for d in depths)
    widths = tuple(positive_int(w, "each stage width") for w in widths)
    if not depths or len(depths) != len(widths):
        raise ValueError(f"depths and widths need one entry per stage, got {len(depths)} and {len(widths)}")
    preact = block.startswith("preact_")
    channels = positive_int(stem_channels, "stem_channels")
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
            elif block == "residual":  # stride_in_1x1, groups and base_width do not apply
                spec = residual(width, strides != 1 or channels != width, strides)
            else:
                spec = basic(width, strides != 1 or channels != width, strides, preact)
            blocks.append(spec)
            channels = spec.num_channels
        stages.append((f"b{index + 2}", tuple(blocks)))
    # The book's convention (Residual blocks) keeps the convolution biases, torchvision's drops them before BN.
    stem_spec = StemSpec(
        channels=stem_channels,
        conv_bias=block == "residual",
        in_channels=positive_int(in_channels, "in_channels"),
        preact=preact,  # no BN or ReLU in the stem: the first block's bn1 normalizes the pooled output
        **STEMS[stem],
    )
    return ModelSpec(
        stem_spec,
        tuple(stages),
        HeadSpec(positive_int(num_classes, "num_classes"), preact=preact),
    )


@dataclass(frozen=True)
class FamilyModel:
    """One model of the ResNet family as data: what ``spec()`` needs to describe it, and who defined it.

    ``name`` is the builder's name in every backend (``resnet.resnet50``...) and in ``resnet summary``.
    ``block`` is one of ``BLOCK_KINDS`` (``"residual"``: the chapter's ``Residual``, in the book's convention
    with convolution biases; the others torchvision's), ``stem`` one of ``STEMS``. ``num_classes`` and
    ``in_channels`` are the builder's defaults (ImageNet's 1000 classes and 3 channels, or the book's 10 and 1),
    ``input_size`` the height and width of the images it is meant for (``resnet summary``'s default input).
    """

    name: str
    title: str
    block: str
    depths: tuple[int, ...]
    groups: int = 1
    base_width: int = 64
    widths: tuple[int, ...] = IMAGENET_WIDTHS
    source: str = "He et al. 2016, Table 1"
    stem: str = "imagenet"
    num_classes: int = 1000
    in_channels: int = 3
    input_size: int = 224

    def spec(
        self, num_classes: int | None = None, in_channels: int | None = None, stride_in_1x1: bool = False
    ) -> ModelSpec:
        """The model's description for ``num_classes`` outputs and ``in_channels`` input channels (None: the
        model's defaults, ``self.num_classes`` and ``self.in_channels``)."""
        return resnet_spec(
            self.block,
            self.depths,
            self.widths,
            self.num_classes if num_classes is None else num_classes,
            self.in_channels if in_channels is None else in_channels,
            self.groups,
            self.base_width,
            flag(stride_in_1x1, "stride_in_1x1"),
            stem=self.stem,
        )

    def builder(self, model_class: Callable[..., Any]) -> Callable[..., Any]:
        """This model's builder function (``resnet50()``...) for a backend whose ``ResNet`` is ``model_class``:
        the same name, signature and docstring in every backend. Every builder takes the same parameters; their
        defaults are the model's (``resnet18_multigpu()`` is the book's ``resnet18(10, in_channels=1)``)."""

        def build(
            num_classes: int = self.num_classes,
            in_channels: int = self.in_channels,
            stride_in_1x1: bool = False,
            *,
            lr: float = DEFAULT_LR,
            dtype: str = "float32",
        ) -> Any:
            return model_class(spec=self.spec(num_classes, in_channels, stride_in_1x1), lr=lr, dtype=dtype)

        build.__name__ = build.__qualname__ = self.name
        build.__doc__ = self.docstring
        return build

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """The NCHW shape of one image the model is meant for, e.g. ``(1, 3, 224, 224)``."""
        return (1, self.in_channels, self.input_size, self.input_size)

    @property
    def description(self) -> str:
        """One line on what the model is, e.g. ``"ResNet-50, torchvision's convention"``."""
        if self.block == "residual":
            return f"{self.title}, the chapter's Residual blocks; stem: {self.spec().stem.describe()}"
        return f"{self.title}, torchvision's convention"

    @property
    def docstring(self) -> str:
        """The builder functions' docstring, the same in every backend."""
        bottleneck = self.block.endswith("bottleneck")
        book = self.block == "residual"
        blocks = "bottleneck blocks" if bottleneck else "the chapter's Residual blocks" if book else "basic blocks"
        title = f"{self.title} ({self.source}): {blocks} {{{', '.join(map(str, self.depths))}}}"
        if self.groups > 1:
            title += f" with grouped 3x3 convolutions (cardinality {self.groups}, base width {self.base_width})"
        if self.block.startswith("preact"):
            body = (
                "Pre-activation (ResNet v2): BN and ReLU before each convolution, nothing after the additions, and "
                "a final BN and ReLU before the pooling. Projection shortcuts are bare 1x1 convolutions on the "
                "pre-activated input. No convolution biases. The layers are those of timm's ResNetV2 "
                "(resnetv2_18 ... resnetv2_152) and Keras Hub's ResNet with use_pre_activation=True."
            )
        elif book:
            body = (
                "The book's convention: convolution biases, and projection shortcuts that are bare 1x1 "
                "convolutions (no BN), as in the chapter's ResNet-18."
            )
        else:
            body = "torchvision's convention: no convolution biases, BN in the projection shortcuts."
        if bottleneck:
            body += (
                ' The stride of a bottleneck sits on its 3x3 convolution, as in torchvision ("ResNet v1.5"); '
                "``stride_in_1x1=True`` puts it on the first 1x1 convolution, as the paper does."
            )
        stem = self.spec().stem
        body += f" The stem is {stem.describe()}"
        if stem.pool is None:
            body += " (the book's change for small images, which it keeps at full size in the first stage)"
        body += "; the head global average pooling and a dense layer. Parts: ``b1`` (stem), ``b2``-``b5`` (stages), "
        body += "``last`` (head)."
        imagenet = (self.num_classes, self.in_channels) == (1000, 3)
        args = [
            "num_classes: outputs of the dense layer "
            + ("(ImageNet's 1000 by default)." if imagenet else f"({self.num_classes} by default, as in the book)."),
            "in_channels: channels of the input images "
            + ("(3 by default)." if imagenet else f"({self.in_channels} by default, as in the book)."),
            "stride_in_1x1: the paper's stride placement"
            + (
                " (on the first 1x1 convolution)."
                if bottleneck
                else f"; no effect on {'Residual' if book else 'basic'} blocks."
            ),
            "lr: the learning rate the model keeps as ``model.lr`` for its train step (the book's ``lr``).",
            'dtype: "float32" (the default) or "float64", the precision of the weights and the computation.',
        ]
        wrap = lambda text, indent: textwrap.fill(text, 104, initial_indent=indent, subsequent_indent=indent)  # noqa
        return (
            "\n\n".join([title + ".", wrap(body, "    "), "    Args:\n" + "\n".join(wrap(a, "        ") for a in args)])
            + "\n"
        )


def _family() -> dict[str, FamilyModel]:
    v2 = "He et al. 2016, Identity Mappings in Deep Residual Networks"
    resnext = "Xie et al. 2017, Aggregated Residual Transformations"
    multigpu = 'Dive into Deep Learning, "Concise Implementation for Multiple GPUs"'
    depths = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
    models = [
        *(FamilyModel(f"resnet{n}", f"ResNet-{n}", "basic" if n < 50 else "bottleneck", d) for n, d in depths.items()),
        *(
            FamilyModel(
                f"preact_resnet{n}",
                f"Pre-activation ResNet-{n}",
                "preact_basic" if n < 50 else "preact_bottleneck",
                d,
                source=v2,
            )
            for n, d in depths.items()
        ),
        FamilyModel("resnext50_32x4d", "ResNeXt-50 (32x4d)", "bottleneck", depths[50], 32, 4, source=resnext),
        FamilyModel("resnext101_32x8d", "ResNeXt-101 (32x8d)", "bottleneck", depths[101], 32, 8, source=resnext),
        # The book's resnet18(num_classes, in_channels=1): the chapter's ResNet-18 with the small stem, trained on
        # Fashion-MNIST's 28x28 images (not resized) in the section.
        FamilyModel(
            "resnet18_multigpu",
            "Multi-GPU ResNet-18",
            "residual",
            depths[18],
            source=multigpu,
            stem="small",
            num_classes=10,
            in_channels=1,
            input_size=28,
        ),
    ]
    return {model.name: model for model in models}


#: The family by builder name, in the order every backend lists its builders.
FAMILY: dict[str, FamilyModel] = _family()


def family_spec(
    name: str, num_classes: int | None = None, in_channels: int | None = None, stride_in_1x1: bool = False
) -> ModelSpec:
    """The description of the family's model ``name`` (e.g. ``"resnet50"``), for ``num_classes`` outputs and
    ``in_channels`` input channels (None: the model's defaults, 1000 and 3 for the ImageNet models);
    ValueError listing the names."""
    if name not in FAMILY:
        raise ValueError(f"unknown model {name!r}; the family: {', '.join(FAMILY)}")
    return FAMILY[name].spec(num_classes, in_channels, stride_in_1x1)


def family_builders(model_class: Callable[..., Any]) -> dict[str, Callable[..., Any]]:
    """Every builder function of the family (``resnet18()`` ... ``resnet18_multigpu()``) for a backend whose
    ``ResNet`` is ``model_class``, by name, in ``FAMILY``'s order: what each backend exports."""
    return {name: model.builder(model_class) for name, model in FAMILY.items()}
