"""Shape arithmetic and the canonical tensor list of a block or model, computed from its description alone.

Everything here is in NCHW order and canonical layouts: OIHW convolution kernels, (out, in) dense weights,
and BatchNorm ``weight`` (scale), ``bias`` (shift), ``running_mean`` and ``running_var``.
"""

from __future__ import annotations

from typing import Iterator, NamedTuple

from resnet.specs import (
    BatchNormSpec,
    BlockSpec,
    ConvSpec,
    DenseSpec,
    LayerSpec,
    ModelSpec,
    PoolSpec,
    check_block_input,
)

__all__ = [
    "TensorInfo",
    "block_output_shape",
    "conv_output_size",
    "model_part_shapes",
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


def _conv_shape(shape: Shape, conv: ConvSpec | PoolSpec) -> Shape:
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
    stem = model.stem.layers(input_shape[1])
    shape = _conv_shape(_conv_shape(input_shape, stem["conv"]), model.stem.pool)
    parts = [("b1", shape)]
    for stage_name, blocks in model.stages:
        for block in blocks:
            shape = block_output_shape(block, shape)
        parts.append((stage_name, shape))
    parts.append(("last", (input_shape[0], model.head.num_classes)))
    return parts


class TensorInfo(NamedTuple):
    """Shape and trainability of one canonical tensor (BatchNorm running statistics are not trainable)."""

    shape: Shape
    trainable: bool


def _layer_tensors(prefix: str, layer: LayerSpec) -> Iterator[tuple[str, TensorInfo]]:
    if isinstance(layer, ConvSpec):
        yield f"{prefix}.weight", TensorInfo(layer.weight_shape(), True)
        if layer.bias:
            yield f"{prefix}.bias", TensorInfo((layer.out_channels,), True)
    elif isinstance(layer, BatchNormSpec):
        c = (layer.num_features,)
        yield f"{prefix}.weight", TensorInfo(c, True)
        yield f"{prefix}.bias", TensorInfo(c, True)
        yield f"{prefix}.running_mean", TensorInfo(c, False)
        yield f"{prefix}.running_var", TensorInfo(c, False)
    elif isinstance(layer, DenseSpec):
        yield f"{prefix}.weight", TensorInfo((layer.out_features, layer.in_features), True)
        yield f"{prefix}.bias", TensorInfo((layer.out_features,), True)
    else:  # pragma: no cover - the spec types are closed
        raise TypeError(f"unknown layer description {layer!r}")


def _block_tensors(prefix: str, block: BlockSpec, in_channels: int) -> Iterator[tuple[str, TensorInfo]]:
    for name, layer in block.layers(in_channels).items():
        yield from _layer_tensors(f"{prefix}{name}", layer)


def tensor_infos(spec: BlockSpec | ModelSpec, input_shape: Shape) -> dict[str, TensorInfo]:
    """Canonical tensor name -> (shape, trainable) for a block or model fed an NCHW ``input_shape``."""
    if not isinstance(spec, ModelSpec):
        block_output_shape(spec, input_shape)
        return dict(_block_tensors("", spec, input_shape[1]))
    infos: dict[str, TensorInfo] = {}
    for name, layer in spec.stem.layers(input_shape[1]).items():
        infos.update(_layer_tensors(f"b1.{name}", layer))
    channels = spec.stem.channels
    for prefix, block in spec.blocks():
        infos.update(_block_tensors(f"{prefix}.", block, channels))
        channels = block.num_channels
    for name, layer in spec.head.layers(channels).items():
        infos.update(_layer_tensors(f"last.{name}", layer))
    return infos
