"""The architectures a checkpoint converts to and from: the family's ImageNet models and torchvision's wide
ResNets and ResNeXt-101 64x4d by name, and a weights file's model description read back without ``eval``."""

from __future__ import annotations

import ast
from typing import Any

from resnet import specs
from resnet.specs import FAMILY, ModelSpec, resnet_spec

__all__ = ["ARCHITECTURES", "architecture_spec", "parse_spec"]

#: The architectures a checkpoint can be converted to, by name: the family's models (``resnet.specs.FAMILY``)
#: and torchvision's wide ResNets and ResNeXt-101 64x4d, which the family does not list (build them with
#: ``ResNet(spec=architecture_spec(name))``). Name -> ``resnet_spec`` keyword arguments.
ARCHITECTURES: dict[str, dict[str, Any]] = {
    **{
        name: {"block": m.block, "depths": m.depths, "groups": m.groups, "base_width": m.base_width}
        for name, m in FAMILY.items()
        if m.stem == "imagenet"
    },
    "wide_resnet50_2": {"block": "bottleneck", "depths": (3, 4, 6, 3), "base_width": 128},
    "wide_resnet101_2": {"block": "bottleneck", "depths": (3, 4, 23, 3), "base_width": 128},
    "resnext101_64x4d": {"block": "bottleneck", "depths": (3, 4, 23, 3), "groups": 64, "base_width": 4},
}


def architecture_spec(
    name: str, num_classes: int = 1000, in_channels: int = 3, stride_in_1x1: bool = False
) -> ModelSpec:
    """The description of architecture ``name`` (a key of ``ARCHITECTURES``; ``resnet18-imagenet``, the
    command line's name of the family's ``resnet18``, too); ValueError listing the names."""
    key = name.strip().lower().replace("-", "_")
    key = "resnet18" if key == "resnet18_imagenet" else key
    if key not in ARCHITECTURES:
        raise ValueError(f"unknown model {name!r}; models a checkpoint converts to: {', '.join(ARCHITECTURES)}")
    return resnet_spec(
        **ARCHITECTURES[key], num_classes=num_classes, in_channels=in_channels, stride_in_1x1=stride_in_1x1
    )


#: The description classes ``parse_spec`` may construct, and nothing else.
_SPEC_CLASSES = {
    cls.__name__: cls
    for cls in (
        specs.ModelSpec,
        specs.StemSpec,
        specs.HeadSpec,
        specs.BasicSpec,
        specs.BottleneckSpec,
        specs.ResidualSpec,
        specs.ResNeXtSpec,
    )
}


def parse_spec(text: str) -> ModelSpec:
    """The model description in a weights file's header (``repr`` of a ModelSpec), rebuilt without ``eval``:
    only the description classes, tuples and constants are accepted; ValueError for anything else."""

    def build(node: ast.AST) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Tuple):
            return tuple(build(item) for item in node.elts)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant):
            return -node.operand.value
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _SPEC_CLASSES:
            args = [build(arg) for arg in node.args]
            return _SPEC_CLASSES[node.func.id](*args, **{kw.arg: build(kw.value) for kw in node.keywords if kw.arg})
        raise ValueError(f"unexpected {ast.dump(node)[:80]}")

    try:
        spec = build(ast.parse(text, mode="eval").body)
    except (SyntaxError, ValueError, TypeError) as error:
        raise ValueError(f"the model description {text[:120]!r} cannot be read: {error}") from error
    if not isinstance(spec, ModelSpec):
        raise ValueError(f"the description {text[:120]!r} is a {type(spec).__name__}, not a whole model")
    return spec
