"""torchvision's ResNet checkpoints (``torchvision.models.resnet``): ResNet-18 to -152, ResNeXt and the wide
ResNets, as ``state_dict()`` files.

Names: the stem ``conv1``/``bn1``; the stages ``layer1``...``layer4`` of blocks ``layer1.0``..., each with
``conv1``/``bn1``... and a projection shortcut ``downsample.0`` (convolution) and ``downsample.1`` (BN); the head
``fc``. Layouts are already canonical (OIHW, (out, in)). A file does not say where a bottleneck's stride sits:
torchvision puts it on the 3x3 convolution ("ResNet v1.5"), the default here; ``stride_in_1x1=True`` is for
files from models built the paper's way.
"""

from __future__ import annotations

from collections.abc import Callable

from resnet.checkpoints.mapping import Rule, SourceFormat, register
from resnet.checkpoints.model_checks import check_model, check_v1_5, describe_stages
from resnet.checkpoints.readers import read_checkpoint, write_checkpoint
from resnet.specs import ModelSpec

__all__ = ["RULES", "TORCHVISION"]

_BLOCK = r"b(?P<stage>\d+)\.(?P<block>\d+)"
#: Canonical -> torchvision names; timm's ResNet (``resnet*``, ``resnext*``) uses the same.
RULES = (
    Rule(r"b1\.conv\.(?P<kind>weight)", "conv1.{kind}"),
    Rule(r"b1\.bn\.(?P<kind>\w+)", "bn1.{kind}"),
    Rule(_BLOCK + r"\.(?P<layer>conv\d|bn\d)\.(?P<kind>\w+)", "layer{stage1}.{block}.{layer}.{kind}"),
    Rule(_BLOCK + r"\.downsample\.conv\.(?P<kind>\w+)", "layer{stage1}.{block}.downsample.0.{kind}"),
    Rule(_BLOCK + r"\.downsample\.bn\.(?P<kind>\w+)", "layer{stage1}.{block}.downsample.1.{kind}"),
    Rule(r"last\.fc\.(?P<kind>\w+)", "fc.{kind}"),
)
#: BatchNorm's step counter, which a model does not need.
IGNORED = (r".*\.num_batches_tracked",)


def check(spec: ModelSpec) -> None:
    """torchvision's ResNet class holds basic and bottleneck (post-activation) blocks behind the ImageNet stem."""
    check_model("torchvision", spec, {"basic", "bottleneck"})


def describe(arrays: dict) -> str | None:
    """The stages of a torchvision-named checkpoint, in words."""
    return describe_stages(arrays, r"layer(\d+)\.(\d+)\.", r"\.conv3\.")


def state_dict_writer(fmt_name: str) -> Callable[[dict, ModelSpec, str], None]:
    """The writer of format ``fmt_name``'s state dict files (.pth with torch, or .safetensors) that
    ``model.load_state_dict`` takes: torchvision's and timm's, whose bottlenecks both stride the 3x3."""

    def write(arrays: dict, spec: ModelSpec, path: str) -> None:
        check_v1_5(fmt_name, spec)
        write_checkpoint(arrays, path, {"format": "pt"})

    return write


TORCHVISION = register(
    SourceFormat(
        "torchvision",
        RULES,
        read_checkpoint,
        state_dict_writer("torchvision"),
        ignored=IGNORED,
        check=check,
        describe=describe,
        export_counter="num_batches_tracked",
    )
)
