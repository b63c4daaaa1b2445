"""timm's ResNet checkpoints (pytorch-image-models): ``ResNet`` (``resnet*``, ``resnext*``), named as
torchvision's, and the pre-activation ``ResNetV2`` with BatchNorm (``resnetv2_18``/``_34`` basic blocks,
``resnetv2_50``/``_101``/``_152`` bottlenecks).

ResNetV2's names: the stem convolution ``stem.conv`` (no BN after it in a pre-activation model); the stages
``stages.0``... of ``blocks.0``..., each block ``norm1``, ``conv1``, ``norm2``, ``conv2`` (``norm3``, ``conv3``)
and a projection ``downsample.conv`` (no norm: it reads the pre-activated input); the final ``norm`` and the
head ``head.fc``, a 1x1 convolution (``(classes, C, 1, 1)``, reshaped to the dense layer's ``(classes, C)``).
timm computes what the pre-activation models here compute: the projection reads ``norm1``'s output (BN and
ReLU), an identity shortcut the block's raw input; a bottleneck's stride sits on its 3x3 convolution (a basic
block's on its first); ``norm`` is BN and ReLU before the pooling. The BiT models (``resnetv2_*_bit``:
GroupNorm and weight-standardized convolutions) and the ``d``/``t`` variants (deep stems, average-pooling
shortcuts) compute something else and are refused by their names.
"""

from __future__ import annotations

from collections.abc import Sequence

from resnet.checkpoints import torchvision
from resnet.checkpoints.mapping import Rule, SourceFormat, register
from resnet.checkpoints.model_checks import check_model, describe_stages
from resnet.checkpoints.readers import read_checkpoint
from resnet.specs import ModelSpec

__all__ = ["RESNET_V2_RULES", "TIMM"]

_BLOCK = r"b(?P<stage>\d+)\.(?P<block>\d+)"
_V2_BLOCK = "stages.{stage0}.blocks.{block}"
#: Canonical -> timm's ResNetV2 names (pre-activation models).
RESNET_V2_RULES = (
    Rule(r"b1\.conv\.(?P<kind>weight)", "stem.conv.{kind}"),
    Rule(r"b1\.bn\.(?P<kind>\w+)", "stem.norm.{kind}"),  # timm's non-pre-activation stem; no preact model has it
    Rule(_BLOCK + r"\.bn(?P<n>\d)\.(?P<kind>\w+)", _V2_BLOCK + ".norm{n}.{kind}"),
    Rule(_BLOCK + r"\.conv(?P<n>\d)\.(?P<kind>\w+)", _V2_BLOCK + ".conv{n}.{kind}"),
    Rule(_BLOCK + r"\.downsample\.conv\.(?P<kind>\w+)", _V2_BLOCK + ".downsample.conv.{kind}"),
    Rule(r"last\.bn\.(?P<kind>\w+)", "norm.{kind}"),
    Rule(r"last\.fc\.weight", "head.fc.weight", "oi11->oi"),
    Rule(r"last\.fc\.bias", "head.fc.bias"),
)


def rules(spec: ModelSpec) -> Sequence[Rule]:
    """ResNetV2's names for a pre-activation model, ResNet's (torchvision's) for the others."""
    preact = spec.head.preact
    return RESNET_V2_RULES if preact else torchvision.RULES


def check(spec: ModelSpec) -> None:
    """timm's ResNet holds basic and bottleneck blocks, ResNetV2 their pre-activation versions, each model
    one kind; both behind the ImageNet stem."""
    preact = spec.head.preact
    kinds = {"preact_basic", "preact_bottleneck"} if preact else {"basic", "bottleneck"}
    check_model("timm", spec, kinds)


def describe(arrays: dict) -> str | None:
    """The stages of a timm-named checkpoint (ResNet or ResNetV2), in words."""
    if any(name.startswith("stages.") for name in arrays):
        found = describe_stages(arrays, r"stages\.(\d+)\.blocks\.(\d+)\.", r"\.conv3\.")
        return found and f"{found} (ResNetV2, pre-activation)"
    return torchvision.describe(arrays)


TIMM = register(
    SourceFormat(
        "timm",
        rules,
        read_checkpoint,
        torchvision.state_dict_writer("timm"),
        ignored=torchvision.IGNORED,
        check=check,
        describe=describe,
        hints=((r"stem\.norm\..*", "timm's pre-activation models have no BN after the stem convolution"),),
        export_counter="num_batches_tracked",
    )
)
