"""The docstrings of the classes every backend defines, written once: the same text in every framework.

A backend's class takes its docstring from here (``__doc__ = CLASS_DOCS["Residual"]``) and adds only what is
particular to its framework (Flax's ``training`` field, say).
"""

from __future__ import annotations

__all__ = ["CLASS_DOCS", "FLAX_TRAINING_FIELD"]

#: Class name -> docstring.
CLASS_DOCS: dict[str, str] = {
    "Residual": """\
The residual block of ResNet: 3x3 conv, BN, ReLU, 3x3 conv, BN, plus the shortcut, then ReLU.

Args:
    num_channels: output channels of both 3x3 convolutions.
    use_1x1conv: put a 1x1 convolution on the shortcut, to change channels or resolution.
    strides: stride of the first 3x3 convolution (and of the 1x1 shortcut), 1 or 2 (or the book's ``(2, 2)``).
""",
    "ResNeXtBlock": """\
The ResNeXt block: 1x1 conv, grouped 3x3 conv, 1x1 conv (each with BN), plus the shortcut, then ReLU.

Args:
    num_channels: output channels.
    groups: the number of groups (cardinality) of the 3x3 convolution, as in the chapter's text and the
        ResNeXt paper; each group has ``round(num_channels * bot_mul) // groups`` channels. The book's
        code passes ``bot_channels // groups`` to the convolution, so there ``groups`` is the width of
        each group: the book's ``ResNeXtBlock(32, 16, 1)`` (2 groups of 16) is ``ResNeXtBlock(32, 2, 1)``.
    bot_mul: bottleneck width as a multiple of ``num_channels``.
    use_1x1conv: put a 1x1 convolution and BN on the shortcut.
    strides: stride of the 3x3 convolution (and of the shortcut), 1 or 2 (or the book's ``(2, 2)``).
""",
    "BasicBlock": """\
The basic block of ResNet-18 and -34 in torchvision's convention: 3x3 conv, BN, ReLU, 3x3 conv, BN, plus
the shortcut, then ReLU. Unlike the chapter's ``Residual``: no convolution biases, and the projection
shortcut ``downsample`` is a 1x1 convolution followed by BN.

Args:
    num_channels: output channels of both 3x3 convolutions.
    use_1x1conv: a projection shortcut (1x1 convolution and BN), to change channels or resolution.
    strides: stride of the first 3x3 convolution (and of the shortcut), 1 or 2 (or the book's ``(2, 2)``).
""",
    "Bottleneck": """\
The bottleneck block of ResNet-50/101/152 and ResNeXt in torchvision's convention: 1x1 conv, BN, ReLU,
3x3 conv (grouped for ResNeXt), BN, ReLU, 1x1 conv, BN, plus the shortcut, then ReLU. No convolution
biases; the projection shortcut ``downsample`` is a 1x1 convolution followed by BN.

Args:
    planes: the output has ``4 * planes`` channels; the inner convolutions ``int(planes * base_width / 64)
        * groups`` (torchvision's rule).
    use_1x1conv: a projection shortcut (1x1 convolution and BN), to change channels or resolution.
    strides: stride of the 3x3 convolution (torchvision's "ResNet v1.5") and of the shortcut, 1 or 2 (or the
        book's ``(2, 2)``).
    groups: the number of groups (cardinality) of the 3x3 convolution: 32 for ResNeXt.
    base_width: channels per group at ``planes=64`` (torchvision's ``width_per_group``): 4 for ResNeXt-50 32x4d.
    stride_in_1x1: put the stride on the first 1x1 convolution instead, as the ResNet paper does.
""",
    "PreActBasic": """\
The pre-activation basic block of ResNet v2 (He et al. 2016, "Identity Mappings"): BN, ReLU, 3x3 conv,
BN, ReLU, 3x3 conv, plus the shortcut, with nothing after the addition. The projection shortcut
``downsample`` is a bare 1x1 convolution on the pre-activated input; no convolution biases.

Args:
    num_channels: output channels of both 3x3 convolutions.
    use_1x1conv: a projection shortcut (1x1 convolution), to change channels or resolution.
    strides: stride of the first 3x3 convolution (and of the shortcut), 1 or 2 (or the book's ``(2, 2)``).
""",
    "PreActBottleneck": """\
The pre-activation bottleneck block of ResNet v2: BN, ReLU, 1x1 conv, BN, ReLU, 3x3 conv, BN, ReLU, 1x1
conv, plus the shortcut, with nothing after the addition. The projection shortcut ``downsample`` is a bare
1x1 convolution on the pre-activated input; no convolution biases.

Args:
    planes: the output has ``4 * planes`` channels; the inner convolutions ``int(planes * base_width / 64)
        * groups`` (torchvision's rule).
    use_1x1conv: a projection shortcut (1x1 convolution), to change channels or resolution.
    strides: stride of the 3x3 convolution (and of the shortcut), 1 or 2 (or the book's ``(2, 2)``).
    groups: the number of groups (cardinality) of the 3x3 convolution.
    base_width: channels per group at ``planes=64`` (torchvision's ``width_per_group``).
    stride_in_1x1: put the stride on the first 1x1 convolution instead, as the ResNet paper does.
""",
    "ResNet": """\
The chapter's ResNet: the stem ``b1``, one stage per ``arch`` entry (``b2``, ``b3``...), the head ``last``.

Args:
    arch: one ``(num_residuals, num_channels)`` pair per stage, e.g. ``((2, 64), (2, 128), (2, 256),
        (2, 512))`` for ResNet-18.
    lr: the learning rate, kept as ``model.lr``: the train step uses it when given none (the book's
        ``d2l.Classifier`` keeps it the same way).
    num_classes: outputs of the final dense layer.
    spec: instead of ``arch`` and ``num_classes``, any model description (``resnet.specs.ModelSpec``), as
        the family's builders (``resnet50()``...) pass: the same parts, from its stem, stages and head.
    dtype: ``"float32"`` (the default) or ``"float64"``, the precision of the weights and the computation.
""",
    "ResNet18": """\
The book's ResNet-18: four stages of two residual blocks, 64 to 512 channels.

Args:
    lr: the learning rate, kept as ``model.lr`` (the chapter's recipe: ``ResNet18(lr=0.01)``).
    num_classes: outputs of the final dense layer.
    dtype: ``"float32"`` (the default) or ``"float64"``.
""",
}

#: What a Flax block or model adds to its docstring: the book's ``training`` field.
FLAX_TRAINING_FIELD = """
Flax field:
    training: BatchNorm uses batch statistics and updates ``batch_stats`` (the book's field); the hooks clone
        the module with the mode they need.
"""
