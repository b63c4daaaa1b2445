"""Recognizing a weights file of the old pre-activation layout (resnet 0.1.0's ``preact_resnet*``, with a
BatchNorm and ReLU in the stem), to say what it is instead of listing its tensors as a mismatch: used by
``resnet.weights.check_arrays`` when a file is loaded and by ``resnet.rundir`` when a run is resumed."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

__all__ = ["old_preact_layout_message"]

#: The start of the canonical names of the stem's BatchNorm, which only the old pre-activation layout has in a
#: model whose stem has none.
_STEM_BN = "b1.bn."
#: The start of the canonical names of the BatchNorm in front of the head, which only pre-activation models have.
_HEAD_BN = "last.bn."


def old_preact_layout_message(
    source: str, expected: Iterable[str], found: Mapping[str, np.ndarray], others: list[list[str]]
) -> str | None:
    """The message for a file of the old pre-activation layout (what it is, what changed, what can be done), or
    None unless it is one: the file (``found``) has a stem BatchNorm that the pre-activation model, whose
    canonical tensor names are ``expected``, has not, and the BatchNorm in front of the head that only a
    pre-activation model has (so a plain ResNet's file is not taken for one). ``others``: the names missing,
    misshapen and of a wrong dtype besides, listed after it. Raised as OldPreactLayoutError by ``check_arrays``
    and by resuming a run (``resnet.rundir``)."""
    expected = list(expected)
    stem_bn = [name for name in found if name.startswith(_STEM_BN) and name not in expected]
    head_bn = [name for name in expected if name.startswith(_HEAD_BN)]
    if (
        not stem_bn
        or not head_bn
        or not all(name in found for name in head_bn)
        or "b1.conv.weight" not in expected
        or any(name.startswith(_STEM_BN) for name in expected)
    ):
        return None
    scale = found.get(_STEM_BN + "weight")
    channels = f" for {scale.shape[0]} channels" if scale is not None and scale.ndim == 1 else ""
    trainable = sum(int(np.asarray(found[name]).size) for name in stem_bn if name.endswith((".weight", ".bias")))
    lines = [
        f"{source} holds a pre-activation model in the old layout (resnet 0.1.0's preact_resnet*): a BatchNorm and "
        f"ReLU between the stem's convolution and its max pooling ({', '.join(sorted(stem_bn))}: {trainable} "
        f"trainable parameters{channels}). The pre-activation models now have none there, as in He et al.'s code for "
        "'Identity Mappings in Deep Residual Networks', timm's ResNetV2 and Keras Hub (use_pre_activation=True): "
        "the stem is the convolution and the max pooling, and the first block's bn1 normalizes the pooled output.",
        "These weights do not load as they are, and no conversion keeps what they compute: the stem's BN and ReLU "
        "were part of the function the model learned (the ReLU cannot be folded into the convolution). Retrain the "
        "model with this version (resnet train --model ...); or, to start from these weights anyway, drop the "
        "b1.bn.* tensors (resnet.weights.read_weights, delete them, resnet.weights.write_weights) and fine-tune: "
        "until then it computes something other than the saved model did.",
    ]
    titles = ("missing", "misshapen", "wrong dtype")
    lines += [f"  also {title} ({len(names)}): " + ", ".join(names) for title, names in zip(titles, others) if names]
    return "\n".join(lines)
