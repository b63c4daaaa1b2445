"""What the source formats' tables check of a model and say of a checkpoint that does not fit: the model's
stem and kinds of block (``check_model``), the bottleneck's stride (``check_v1_5``), a checkpoint's stages in
words (``describe_stages``). Used by the formats in ``resnet.checkpoints``."""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

from resnet.checkpoints.mapping import CheckpointMismatchError
from resnet.specs import ModelSpec

__all__ = ["block_kinds", "check_model", "check_v1_5", "describe_stages"]


def block_kinds(spec: ModelSpec) -> set[str]:
    """The kinds of block (``BLOCK_KINDS``) a model is made of."""
    return {block.kind for _, block in spec.blocks()}


def check_model(fmt_name: str, spec: ModelSpec, kinds: set[str], conv_bias: bool = False) -> None:
    """CheckpointMismatchError unless ``spec`` has the ImageNet stem (7x7/2 convolution, 3x3/2 max pooling,
    no bias unless ``conv_bias``) and blocks of the ``kinds`` a format holds."""
    stem = spec.stem
    if (stem.kernel, stem.stride, stem.max_pool) != (7, 2, True) or stem.conv_bias != conv_bias:
        raise CheckpointMismatchError(
            f"{fmt_name} checkpoints have the ImageNet stem; this model's is {stem.describe()}"
        )
    other = block_kinds(spec) - kinds
    if other:
        raise CheckpointMismatchError(
            f"{fmt_name} checkpoints hold {' or '.join(sorted(kinds))} blocks, not {', '.join(sorted(other))}"
        )


def check_v1_5(fmt_name: str, spec: ModelSpec) -> None:
    """CheckpointMismatchError for a model whose bottlenecks stride their first 1x1 convolution, exported to
    a library whose bottlenecks always stride the 3x3 (torchvision's, timm's): it would compute another model."""
    if any(getattr(block, "stride_in_1x1", False) for _, block in spec.blocks()):
        raise CheckpointMismatchError(
            f"this model strides its bottlenecks on the first 1x1 convolution (stride_in_1x1=True, ResNet v1), but "
            f"{fmt_name}'s bottlenecks always stride the 3x3 (v1.5): there its weights would compute another model. "
            "Export it to transformers (downsample_in_bottleneck), or export a stride_in_1x1=False model"
        )


def describe_stages(arrays: Mapping[str, np.ndarray], block: str, bottleneck: str) -> str | None:
    """The checkpoint's stages in words (``stage depths (2, 2, 2, 2) of basic blocks``), from its names:
    ``block`` a regex whose two groups are a block's stage and index, ``bottleneck`` a regex found only in a
    bottleneck block's names."""
    depths: dict[int, int] = {}
    for name in arrays:
        match = re.match(block, name)
        if match:
            stage, index = int(match.group(1)), int(match.group(2))
            depths[stage] = max(depths.get(stage, 0), index + 1)
    if not depths:
        return None
    kind = "bottleneck" if any(re.search(bottleneck, name) for name in arrays) else "basic"
    return f"stage depths {tuple(depths[s] for s in sorted(depths))} of {kind} blocks"
