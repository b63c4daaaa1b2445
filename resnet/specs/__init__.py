"""The architecture as data: validated descriptions of every layer, block and model, shared by all backends.

Each backend builds its native layers from these descriptions, the NumPy reference runs them, and the
weights files take their canonical tensor names from them (``resnet.walk``). The modules:

* ``layers``: convolution, BatchNorm, dense and pooling descriptions, and the numerical conventions (symmetric
  padding, one BatchNorm epsilon and momentum, the precisions);
* ``blocks``: the chapter's ``Residual`` and ``ResNeXtBlock`` and the family's basic and bottleneck blocks, with
  the class and arguments each backend builds them from;
* ``models``: the stem, stages and head of a network, and the book's ``ResNet(arch)``;
* ``family``: the ResNet family of the chapter's exercises (``FAMILY``), in torchvision's convention, and the
  book's multi-GPU ResNet-18;
* ``validation``: the argument checks they share.

Every public name of those modules is importable from here (``from resnet.specs import ConvSpec``).
"""

from __future__ import annotations

from resnet.specs import blocks, family, layers, models
from resnet.specs.blocks import (
    BLOCK_CLASSES,
    BLOCK_KINDS,
    EXPANSION,
    PROJECTION_ATTRIBUTES,
    BasicSpec,
    BlockSpec,
    BottleneckSpec,
    ResidualSpec,
    ResNeXtSpec,
    basic,
    bottleneck,
    build_block,
    check_block_input,
    constructor_arguments,
    residual,
    resnext,
)
from resnet.specs.family import (
    FAMILY,
    IMAGENET_WIDTHS,
    STEMS,
    FamilyModel,
    family_builders,
    family_spec,
    resnet_spec,
)
from resnet.specs.layers import (
    BN_EPSILON,
    BN_MOMENTUM,
    DTYPES,
    BatchNormSpec,
    ConvSpec,
    DenseSpec,
    LayerSpec,
    PoolSpec,
    check_dtype,
)
from resnet.specs.models import (
    DEFAULT_LR,
    RESNET18_ARCH,
    HeadSpec,
    ModelSpec,
    StemSpec,
    book_resnet,
    book_stage,
    check_model_input,
    model_spec,
)
from resnet.specs.validation import learning_rate

__all__ = [*layers.__all__, *blocks.__all__, *models.__all__, *family.__all__, "learning_rate"]
