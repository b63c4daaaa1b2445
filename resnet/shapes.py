"""Shape arithmetic and the canonical tensor list of a block or model, computed from its description alone.

Everything here is in NCHW order and canonical layouts: OIHW convolution kernels, (out, in) dense weights,
and BatchNorm ``weight`` (scale), ``bias`` (shift), ``running_mean`` and ``running_var``. ``macs`` counts
multiply-adds and ``family_table`` tabulates the ResNet family, from the descriptions alone.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from resnet.specs import (
    FAMILY,
    BlockSpec,
    ConvSpec,
    DenseSpec,
    LayerSpec,
    ModelSpec,
    PoolSpec,
    check_block_input,
    check_model_input,
)
from resnet.walk import is_statistic, tensors

__all__ = [
    "TensorInfo",
    "block_output_shape",
    "conv_macs",
    "conv_output_size",
    "family_table",
    "macs",
    "model_part_shapes",
    "num_trainable",
    "smallest_input_size",
    "tensor_infos",
]

Shape = tuple[int, ...]


def conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a convolution or pooling window along one axis (floor rounding, as all four use)."""
    out = (size + 2 * padding - kernel) // stride + 1
    if out < 1:
        raise ValueError(
            f"an input of size {size} is too small for a {kernel}x{kernel} window with stride {stride} and "
            f"padding {padding}; use a larger input"
        )
    return out


def _conv_shape(shape: Shape, conv: ConvSpec | PoolSpec | None) -> Shape:
    """The NCHW output shape of a convolution or pooling window; ``None`` (a stem without pooling) keeps it."""
    if conv is None:
        return shape
    n, c, h, w = shape
    size = lambda s: conv_output_size(s, conv.kernel, conv.stride, conv.padding)  # noqa: E731
    channels = conv.out_channels if isinstance(conv, ConvSpec) else c
    return (n, channels, size(h), size(w))


def block_output_shape(block: BlockSpec, input_shape: Shape) -> Shape:
    """The NCHW output shape of a block for an NCHW input shape (checks the shortcut can be added)."""
    check_block_input(block, input_shape[1])
    n, _, h, w = input_shape
    size = lambda s: conv_output_size(s, 3, block.strides, 1)  # noqa: E731
    return (n, block.num_channels, size(h), size(w))


def model_part_shapes(model: ModelSpec, input_shape: Shape) -> list[tuple[str, Shape]]:
    """(part name, NCHW output shape) for the stem, each stage and the head."""
    check_model_input(model, input_shape[1])
    stem = model.stem.layers(input_shape[1])
    shape = _conv_shape(_conv_shape(input_shape, stem["conv"]), model.stem.pool)
    parts = [("b1", shape)]
    for stage_name, blocks in model.stages:
        for block in blocks:
            shape = block_output_shape(block, shape)
        parts.append((stage_name, shape))
    parts.append(("last", (input_shape[0], model.head.num_classes)))
    return parts


def smallest_input_size(spec: BlockSpec | ModelSpec, in_channels: int, largest: int = 512) -> int:
    """The smallest square input size whose every feature map keeps at least one pixel (1 for the
    chapter's padded ResNets; more for a spec with unpadded windows)."""
    for size in range(1, largest + 1):
        try:
            shape = (1, in_channels, size, size)
            model_part_shapes(spec, shape) if isinstance(spec, ModelSpec) else block_output_shape(spec, shape)
            return size
        except ValueError as error:
            if "too small" not in str(error):
                raise
    raise ValueError(f"no input up to {largest}x{largest} fits this model")


class TensorInfo(NamedTuple):
    """Shape and trainability of one canonical tensor (BatchNorm running statistics are not trainable)."""

    shape: Shape
    trainable: bool


def _tensor_shape(layer: LayerSpec, kind: str) -> Shape:
    if isinstance(layer, ConvSpec):
        return layer.weight_shape() if kind == "weight" else (layer.out_channels,)
    if isinstance(layer, DenseSpec):
        return (layer.out_features, layer.in_features) if kind == "weight" else (layer.out_features,)
    return (layer.num_features,)  # BatchNorm: scale, shift and both statistics


def tensor_infos(spec: BlockSpec | ModelSpec, input_shape: Shape) -> dict[str, TensorInfo]:
    """Canonical tensor name -> (shape, trainable) for a block or model fed an NCHW ``input_shape``."""
    if isinstance(spec, ModelSpec):
        check_model_input(spec, input_shape[1])
    else:
        block_output_shape(spec, input_shape)
    return {
        tensor.name: TensorInfo(_tensor_shape(tensor.layer, tensor.kind), not is_statistic(tensor.name))
        for tensor in tensors(spec, input_shape[1])
    }


def num_trainable(spec: BlockSpec | ModelSpec, input_shape: Shape) -> int:
    """Trainable parameters of a block or model fed an NCHW ``input_shape`` (BatchNorm statistics excluded)."""
    return sum(math.prod(info.shape) for info in tensor_infos(spec, input_shape).values() if info.trainable)


def conv_macs(conv: ConvSpec, in_channels: int, input_shape: Shape) -> tuple[int, Shape]:
    """(multiply-adds, NCHW output shape) of one convolution over an NCHW input, counted as ``macs`` does;
    also for layers outside the package's blocks, e.g. an Inception block's branches."""
    out = _conv_shape(input_shape, conv)
    n, c, h, w = out
    return n * c * h * w * (in_channels // conv.groups) * conv.kernel * conv.kernel, out


def _block_macs(block: BlockSpec, input_shape: Shape) -> int:
    """Convolutions on the main path run in order, each on the previous one's output; the shortcut's
    convolution (``block.shortcut``) runs on the block's input."""
    block_output_shape(block, input_shape)
    total, shape = 0, input_shape
    for name, layer in block.layers(input_shape[1]).items():
        if isinstance(layer, ConvSpec):
            count, out = conv_macs(layer, layer.in_channels, input_shape if name == block.shortcut else shape)
            total += count
            if name != block.shortcut:
                shape = out
    return total


def macs(spec: BlockSpec | ModelSpec, input_shape: Shape) -> int:
    """Multiply-adds of one forward pass of a block or model over a whole NCHW batch ``input_shape``.

    The convention of torchvision's published figures (counted with fvcore): one multiply-add per weight
    of each convolution per output position (``N * H_out * W_out * C_out * C_in / groups * k * k``) and per
    weight of the dense layer (``N * in * out``). BatchNorm, ReLU, the additions, the pooling and the biases
    are not counted; they are under 1% of the total for the family's models. For ResNet-50 at
    ``(1, 3, 224, 224)`` this gives 4.09 G, as torchvision lists.
    """
    input_shape = tuple(int(d) for d in input_shape)
    if not isinstance(spec, ModelSpec):
        return _block_macs(spec, input_shape)
    check_model_input(spec, input_shape[1])
    total, shape = conv_macs(spec.stem.layers(input_shape[1])["conv"], input_shape[1], input_shape)
    shape = _conv_shape(shape, spec.stem.pool)
    for _, block in spec.blocks():
        total += _block_macs(block, shape)
        shape = block_output_shape(block, shape)
    fc = spec.head.layers(shape[1])["fc"]
    return total + shape[0] * fc.in_features * fc.out_features


def family_table(size: int = 224, in_channels: int = 3, num_classes: int = 1000) -> str:
    """The ResNet family as a Markdown table: blocks, stage depths, trainable parameters and multiply-adds
    (``macs``, one ``size`` x ``size`` image), with the stride where torchvision puts it and where the
    paper does. Computed from the descriptions, as every backend builds them."""
    shape = (1, in_channels, size, size)
    rows = [
        f"| model | blocks | stage depths | parameters | multiply-adds, {size}x{size} | with `stride_in_1x1=True` |",
        "|---|---|---|---:|---:|---:|",
    ]
    for name, model in FAMILY.items():
        spec, paper = model.spec(num_classes, in_channels), model.spec(num_classes, in_channels, stride_in_1x1=True)
        block = model.block.replace("_", " ") + (f", {model.groups}x{model.base_width}d" if model.groups > 1 else "")
        v15, v1 = macs(spec, shape), macs(paper, shape)
        rows.append(
            f"| `{name}` | {block} | {'-'.join(map(str, model.depths))} | {num_trainable(spec, shape):,} "
            f"| {_giga(v15)} | {_giga(v1)}{'' if v1 != v15 else ' (same)'} |"
        )
    return "\n".join(rows)


def _giga(count: int) -> str:
    return f"{count / 1e9:.2f} G" if count >= 1e9 else f"{count / 1e6:.1f} M"
