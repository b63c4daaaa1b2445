"""The chapter's ResNet and ResNet-18 as MXNet Gluon ``HybridBlock``s (NCHW), and the family's builder functions."""

from __future__ import annotations

import functools
from typing import Any, Sequence

import mxnet as mx
from mxnet.gluon import nn

from resnet import specs
from resnet.backends.mxnet import blocks
from resnet.backends.mxnet.layers import _sequential, make_layer
from resnet.docs import CLASS_DOCS
from resnet.shapes import model_part_shapes
from resnet.specs import ModelSpec

__all__ = ["ResNet", "ResNet18", *specs.FAMILY]

#: The native block for a block description.
make_block = functools.partial(specs.build_block, blocks)


class ResNet(nn.HybridBlock):
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
        super().__init__(**kwargs)
        self.spec = specs.model_spec(arch, num_classes, spec)
        dtype = specs.check_dtype(dtype)
        parts: dict[str, nn.HybridBlock] = dict(b1=self.b1())
        for stage_name, stage_blocks in self.spec.stages:  # the book's self.block(...) for the book's arch
            stage = nn.HybridSequential()
            stage.add(*(make_block(b) for b in stage_blocks))
            parts[stage_name] = stage
        parts["last"] = self.head()
        self.net = _sequential(parts)
        self.cast(dtype)  # Gluon's parameters take this precision when they are created

    def b1(self) -> nn.HybridSequential:
        """The stem: 7x7 convolution with stride 2, BN, ReLU, 3x3 max pooling with stride 2."""
        layers, pool = self.spec.stem.layers(), self.spec.stem.pool
        return _sequential(
            dict(
                conv=make_layer(layers["conv"]),
                bn=make_layer(layers["bn"]),
                relu=nn.Activation("relu"),
                # Padded cells never win: MXNet's max pooling takes the maximum over the real cells only.
                pool=nn.MaxPool2D(pool.kernel, pool.stride, pool.padding),
            )
        )

    def block(self, num_residuals: int, num_channels: int, first_block: bool = False) -> nn.HybridSequential:
        """A stage of ``num_residuals`` blocks; all but the first stage start by halving height and width."""
        stage = nn.HybridSequential()
        stage.add(*(make_block(b) for b in specs.book_stage(num_residuals, num_channels, first_block)))
        return stage

    def head(self) -> nn.HybridSequential:
        """The head: global average pooling and a dense layer to the classes (after BN and ReLU in ResNet v2)."""
        layers = self.spec.head.layers()
        preact = dict(bn=make_layer(layers["bn"]), relu=nn.Activation("relu")) if "bn" in layers else {}
        return _sequential(dict(**preact, pool=nn.GlobalAvgPool2D(), flatten=nn.Flatten(), fc=make_layer(layers["fc"])))

    def forward(self, X: Any) -> Any:
        """Check the input's shapes through the whole model, then run it."""
        # Inside a hybridized ResNet the blocks see shapeless Symbols and cannot check their inputs: check
        # the whole model's shapes from its description first (clear errors for a misfit input or stage).
        if isinstance(X, mx.nd.NDArray):
            model_part_shapes(self.spec, X.shape)
        return super().forward(X)

    def hybrid_forward(self, F: Any, X: Any) -> Any:
        return self.net(X)


class ResNet18(ResNet):
    __doc__ = CLASS_DOCS["ResNet18"]

    def __init__(self, num_classes: int = 10, *, dtype: str = "float32", **kwargs: Any) -> None:
        super().__init__(specs.RESNET18_ARCH, num_classes, dtype=dtype, **kwargs)


# The ResNet family of the chapter's exercises, in torchvision's convention: resnet18() ... resnext101_32x8d().
globals().update(specs.family_builders(ResNet))
