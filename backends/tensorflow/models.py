"""The chapter's ResNet and ResNet-18 as ``keras.Model``s (NHWC), and the family's builder functions.

The network is a ``keras.Model``, the outer object that is trained and saved, and its parts ``Sequential``s of
Keras layers. The parts, and the layers with weights in the stem and the head, carry their canonical names as
Keras names (``b1``, ``b2``, ..., ``last``; ``conv``, ``bn``, ``fc``), by which the hooks look them up.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import tensorflow as tf  # before keras, as in resnet.backends.tensorflow.layers

import keras  # isort: skip

from resnet import specs
from resnet.backends.tensorflow import blocks
from resnet.backends.tensorflow.layers import MaxPool2d, Sequential, make_layer
from resnet.docs import CLASS_DOCS
from resnet.specs import ModelSpec

__all__ = ["ResNet", "ResNet18", *specs.FAMILY]

#: The native block for a block description; Keras' options (``dtype``, the dtype policy) as keywords.
make_block = functools.partial(specs.build_block, blocks)


class ResNet(keras.Model):
    __doc__ = CLASS_DOCS["ResNet"]

    def __init__(
        self,
        arch: Sequence[Sequence[int]] | None = None,
        num_classes: int = 10,
        *,
        spec: ModelSpec | None = None,
        dtype: str = "float32",
        **kwargs: Any,
    ) -> None:
        super().__init__(dtype=specs.check_dtype(dtype), **kwargs)
        self.spec = specs.model_spec(arch, num_classes, spec)
        dtype = self.dtype_policy  # every layer takes the model's, as Keras casts each layer's inputs to its own
        parts = [self.b1()]
        for stage_name, stage in self.spec.stages:  # the book's self.block(...) for the book's arch
            parts.append(Sequential([make_block(b, dtype=dtype) for b in stage], dtype=dtype, name=stage_name))
        parts.append(self.head())
        self.net = Sequential(parts, dtype=dtype)

    def b1(self) -> Sequential:
        """The stem: 7x7 convolution with stride 2, BN, ReLU, 3x3 max pooling with stride 2."""
        layers, pool, dtype = self.spec.stem.layers(), self.spec.stem.pool, self.dtype_policy
        return Sequential(
            [
                make_layer(layers["conv"], dtype, name="conv"),
                make_layer(layers["bn"], dtype, name="bn"),
                keras.layers.ReLU(dtype=dtype, name="relu"),
                MaxPool2d(pool.kernel, pool.stride, pool.padding, dtype=dtype, name="pool"),
            ],
            dtype=dtype,
            name="b1",
        )

    def block(self, num_residuals: int, num_channels: int, first_block: bool = False) -> Sequential:
        """A stage of ``num_residuals`` blocks; all but the first stage start by halving height and width."""
        stage = specs.book_stage(num_residuals, num_channels, first_block)
        return Sequential([make_block(b, dtype=self.dtype_policy) for b in stage], dtype=self.dtype_policy)

    def head(self) -> Sequential:
        """The head: global average pooling and a dense layer to the classes (after BN and ReLU in ResNet v2)."""
        layers, dtype = self.spec.head.layers(), self.dtype_policy
        preact = (
            [make_layer(layers["bn"], dtype, name="bn"), keras.layers.ReLU(dtype=dtype, name="relu")]
            if "bn" in layers
            else []
        )
        pool = keras.layers.GlobalAveragePooling2D(dtype=dtype, name="pool")
        return Sequential([*preact, pool, make_layer(layers["fc"], dtype, name="fc")], dtype=dtype, name="last")

    def call(self, X: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        specs.check_model_input(self.spec, X.shape[-1])
        return self.net(X, training=training)


class ResNet18(ResNet):
    __doc__ = CLASS_DOCS["ResNet18"]

    def __init__(self, num_classes: int = 10, *, dtype: str = "float32", **kwargs: Any) -> None:
        super().__init__(specs.RESNET18_ARCH, num_classes, dtype=dtype, **kwargs)


# The ResNet family of the chapter's exercises, in torchvision's convention: resnet18() ... resnext101_32x8d().
globals().update(specs.family_builders(ResNet))
