"""The one walk over a block's or model's canonical layers and tensors, from its description alone.

Every tensor has a canonical name: the path of its layer in the model, joined by dots, and the tensor's kind
(``b1.conv.weight``, ``b2.0.downsample.bn.running_var``, ``last.fc.bias``; in a single block ``conv1.weight``).
The shapes (``resnet.shapes``), the weights files and all four backends find the tensors with this walk, so they
cannot disagree about names or order:

* ``layers(spec)``: (path, layer description) of every layer with tensors, in the order the model runs them;
* ``tensors(spec)``: every canonical tensor with its layer's path and kind;
* ``native_layers(spec, root, child)``: a backend's native layers by path, given how to step from a native module
  to its child (``child``);
* ``native_tensors(spec, root, child, attributes)``: its native tensors by canonical name, given also which
  attribute of a layer holds each kind of tensor;
* ``attach_layers(block, spec, make_layer, make_shortcut)``: a native block's layers created as attributes named
  by those paths, so that the native tree mirrors them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

from resnet.specs import (
    PROJECTION_ATTRIBUTES,
    BatchNormSpec,
    BlockSpec,
    ConvSpec,
    DenseSpec,
    LayerSpec,
    ModelSpec,
)

__all__ = [
    "STATISTICS",
    "Tensor",
    "attach_layers",
    "is_statistic",
    "layer_tensor_kinds",
    "layers",
    "native_layers",
    "native_tensors",
    "tensors",
]

Path = tuple[str, ...]

#: The kinds of tensor that are BatchNorm's running statistics: not trained (torch buffers, Keras non-trainable
#: weights, Flax ``batch_stats``, Gluon parameters with ``grad_req='null'``).
STATISTICS = ("running_mean", "running_var")


class Tensor(NamedTuple):
    """One canonical tensor: its name, the path of its layer, the layer's description and the tensor's kind."""

    name: str
    layer_path: Path
    layer: LayerSpec
    kind: str


def layer_tensor_kinds(layer: LayerSpec) -> tuple[str, ...]:
    """The kinds of tensor a layer holds: ``weight`` and ``bias`` (a convolution may have no bias), and for
    BatchNorm its scale ``weight``, shift ``bias`` and the ``STATISTICS``."""
    if isinstance(layer, ConvSpec):
        return ("weight", "bias") if layer.bias else ("weight",)
    if isinstance(layer, BatchNormSpec):
        return ("weight", "bias", *STATISTICS)
    if isinstance(layer, DenseSpec):
        return ("weight", "bias")
    raise TypeError(f"unknown layer description {layer!r}")


def _named(prefix: Path, described: Mapping[str, LayerSpec]) -> Iterator[tuple[Path, LayerSpec]]:
    # A dotted layer name (downsample.conv) is a layer inside a module inside the block.
    for name, layer in described.items():
        yield (*prefix, *name.split(".")), layer


def layers(spec: BlockSpec | ModelSpec, in_channels: int | None = None) -> Iterator[tuple[Path, LayerSpec]]:
    """(path, layer description) of every layer with tensors, in the order the model runs them: ``("conv1",)``
    in a block; ``("b1", "conv")``, ``("b2", "0", "conv1")`` ... ``("last", "fc")`` in a model.

    With ``in_channels`` (the input's channels) the descriptions carry their input sizes, as the shapes need;
    without, they are as the backends build them, input sizes inferred at the first call.
    """
    if not isinstance(spec, ModelSpec):
        yield from _named((), spec.layers(in_channels))
        return
    yield from _named(("b1",), spec.stem.layers(in_channels))
    channels = None if in_channels is None else spec.stem.channels
    for prefix, block in spec.blocks():
        yield from _named(tuple(prefix.split(".")), block.layers(channels))
        channels = None if channels is None else block.num_channels
    yield from _named(("last",), spec.head.layers(channels))


def tensors(spec: BlockSpec | ModelSpec, in_channels: int | None = None) -> Iterator[Tensor]:
    """Every canonical tensor of a block or model, in the order of ``layers``."""
    for path, layer in layers(spec, in_channels):
        for kind in layer_tensor_kinds(layer):
            yield Tensor(".".join((*path, kind)), path, layer, kind)


def is_statistic(name: str) -> bool:
    """True for the canonical name of a BatchNorm running statistic."""
    return name.rsplit(".", 1)[-1] in STATISTICS


def native_tensors(
    spec: BlockSpec | ModelSpec,
    root: Any,
    child: Callable[[Any, str], Any],
    attributes: Mapping[type, Mapping[str, str]],
) -> dict[str, Any]:
    """Canonical name -> the native object holding that tensor (a parameter, a buffer, a variable).

    Args:
        spec: the model's description.
        root: the native module the paths start from (a block, or the module holding a model's parts).
        child: ``child(module, name)`` -> the native child module named by one step of a path (``"b2"``,
            ``"0"``, ``"conv1"``), e.g. ``getattr``.
        attributes: for each layer description type, the native attribute holding each kind of tensor, e.g.
            ``{BatchNormSpec: {"weight": "gamma", ...}}``.
    """
    found: dict[str, Any] = {}
    for (path, module), (_, layer) in zip(native_layers(spec, root, child).items(), layers(spec)):
        for kind in layer_tensor_kinds(layer):
            found[".".join((*path, kind))] = getattr(module, attributes[type(layer)][kind])
    return found


def native_layers(spec: BlockSpec | ModelSpec, root: Any, child: Callable[[Any, str], Any]) -> dict[Path, Any]:
    """Layer path -> the native layer at that path (``root`` and ``child`` as in ``native_tensors``), for every
    layer of ``layers(spec)``, in its order."""
    return {path: functools.reduce(child, path, root) for path, _ in layers(spec)}


def attach_layers(
    block: Any,
    spec: BlockSpec,
    make_layer: Callable[[LayerSpec], Any],
    make_shortcut: Callable[[ConvSpec, bool], Any],
) -> None:
    """Create a native block's layers as attributes named as in its description (``conv1``, ``bn1``, ...), so
    that the native tree mirrors the canonical paths. The layers of a projection shortcut, ``downsample.conv`` and
    ``downsample.bn``, go into one module ``downsample = make_shortcut(conv, has_bn)``; the attributes that only
    a projection shortcut has (``PROJECTION_ATTRIBUTES``) are None in a block without one."""
    layers = spec.layers()
    for name, layer in layers.items():
        if "." not in name:
            setattr(block, name, make_layer(layer))
    if "downsample.conv" in layers:
        block.downsample = make_shortcut(layers["downsample.conv"], "downsample.bn" in layers)
    for name in PROJECTION_ATTRIBUTES[spec.kind]:
        if name not in layers and f"{name}.conv" not in layers:
            setattr(block, name, None)
