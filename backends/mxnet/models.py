"""The chapter's ResNet and ResNet-18 as MXNet Gluon ``HybridBlock``s (NCHW), and the family's builder functions."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import mxnet as mx
from mxnet.gluon import nn
from resnet.backends.mxnet import blocks
from resnet.backends.mxnet.layers import BothSemantics, make_layer, named_sequential

from resnet import api, specs
from resnet.contract import declared
from resnet.docs import CLASS_DOCS
from resnet.shapes import model_part_shapes
from resnet.specs import BlockSpec, ModelSpec

__all__ = ["ResNet", "ResNet18", *specs.FAMILY]

#: The native block for a block description.
make_block = functools.partial(specs.build_block, blocks)

LAYOUT = declared(__name__).layout


def _in_a_name_scope() -> bool:
    """True while some block's ``name_scope()`` is open, where Gluon names a new block after its siblings."""
    return getattr(mx.gluon.block._BlockScope._current, "value", None) is not None


def _stage(prefix: str | None, described: Sequence[BlockSpec]) -> nn.HybridSequential:
    """A stage: its blocks ``0``, ``1``... in a HybridSequential, their parameters named under it
    (``<prefix>0_conv1_weight``)."""
    stage = nn.HybridSequential(prefix=prefix)
    with stage.name_scope():
        stage.add(*(make_block(b, prefix=f"{i}_") for i, b in enumerate(described)))
    return stage


class ResNet(BothSemantics):
    __doc__ = CLASS_DOCS["ResNet"]

    def __init__(
        self,
        arch: Sequence[Sequence[int]] | None = None,
        lr: float = specs.DEFAULT_LR,
        num_classes: int = 10,
        *,
        spec: ModelSpec | None = None,
        dtype: str = "float32",
        **kwargs: Any,
    ) -> None:
        if kwargs.get("prefix") is None and not _in_a_name_scope():
            # Gluon's default prefix counts the models made before (resnet0_, resnet1_...); this one names the
            # parameters after the class and the canonical path, the same in every model: resnet18_b2_0_conv1_weight.
            kwargs["prefix"] = f"{type(self).__name__.lower()}_"
        super().__init__(**kwargs)
        self.spec = specs.model_spec(arch, num_classes, spec)
        self.lr = specs.learning_rate(lr)
        dtype = specs.check_dtype(dtype)
        with self.name_scope():
            parts: dict[str, nn.HybridBlock] = dict(b1=self.b1())
            for stage_name, stage_blocks in self.spec.stages:  # the book's self.block(...) for the book's arch
                parts[stage_name] = _stage(f"{stage_name}_", stage_blocks)
            parts["last"] = self.head()
            self.net = named_sequential("", lambda: parts)  # "": the parts' names go straight under the model's
        self.cast(dtype)  # Gluon's parameters take this precision when they are created

    def b1(self) -> nn.HybridSequential:
        """The stem: convolution, BN, ReLU and max pooling (the book's 7x7/2 convolution and 3x3/2 pooling; no
        pooling in a stem without, such as the multi-GPU ResNet-18's; no BN or ReLU in a pre-activation one)."""
        layers, pool = self.spec.stem.layers(), self.spec.stem.pool

        def parts() -> dict[str, nn.HybridBlock]:
            stem = dict(conv=make_layer(layers["conv"], "conv_"))
            if "bn" in layers:  # not in a pre-activation stem
                stem.update(bn=make_layer(layers["bn"], "bn_"), relu=nn.Activation("relu", prefix="relu_"))
            if pool is not None:
                # Padded cells never win: MXNet's max pooling takes the maximum over the real cells only.
                stem["pool"] = nn.MaxPool2D(pool.kernel, pool.stride, pool.padding, prefix="pool_")
            return stem

        return named_sequential("b1_", parts)

    def block(self, num_residuals: int, num_channels: int, first_block: bool = False) -> nn.HybridSequential:
        """A stage of ``num_residuals`` blocks; all but the first stage start by halving height and width."""
        return _stage(None, specs.book_stage(num_residuals, num_channels, first_block))

    def head(self) -> nn.HybridSequential:
        """The head: global average pooling and a dense layer to the classes (after BN and ReLU in ResNet v2)."""
        layers = self.spec.head.layers()

        def parts() -> dict[str, nn.HybridBlock]:
            preact = {}
            if "bn" in layers:
                preact = dict(bn=make_layer(layers["bn"], "bn_"), relu=nn.Activation("relu", prefix="relu_"))
            return dict(
                **preact,
                pool=nn.GlobalAvgPool2D(prefix="pool_"),
                flatten=nn.Flatten(prefix="flatten_"),
                fc=make_layer(layers["fc"], "fc_"),
            )

        return named_sequential("last_", parts)

    def forward(self, X: Any) -> Any:
        """Check the input's shapes through the whole model, then run it."""
        # Inside a hybridized ResNet the blocks see shapeless Symbols and cannot check their inputs: check
        # the whole model's shapes from its description first (clear errors for a misfit input or stage).
        if isinstance(X, mx.nd.NDArray):  # mxnet.numpy arrays too
            model_part_shapes(self.spec, X.shape)
        return super().forward(X)

    def hybrid_forward(self, F: Any, X: Any) -> Any:
        return self.net(X)

    def layer_summary(self, X_shape: Sequence[int]) -> None:
        """The book's method: print each part's output shape for an input of ``X_shape`` (NCHW, as in the
        book's MXNet code: ``model.layer_summary((1, 1, 96, 96))``); ``resnet.layer_summary``."""
        api.layer_summary(self, X_shape, layout=LAYOUT)


class ResNet18(ResNet):
    __doc__ = CLASS_DOCS["ResNet18"]

    def __init__(
        self, lr: float = specs.DEFAULT_LR, num_classes: int = 10, *, dtype: str = "float32", **kwargs: Any
    ) -> None:
        super().__init__(specs.RESNET18_ARCH, lr, num_classes, dtype=dtype, **kwargs)


# The ResNet family of the chapter's exercises, in torchvision's convention (resnet18() ... resnext101_32x8d()),
# and the book's multi-GPU ResNet-18 (resnet18_multigpu()).
globals().update(specs.family_builders(ResNet))
