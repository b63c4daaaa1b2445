"""The chapter's residual and ResNeXt blocks and the family's blocks as MXNet Gluon ``HybridBlock``s (NCHW)."""

from __future__ import annotations

from typing import Any

import mxnet as mx
from resnet.backends.mxnet.layers import BothSemantics, Shortcut, _relu, check_names, named_layers

from resnet import specs
from resnet.docs import CLASS_DOCS
from resnet.specs import BlockSpec
from resnet.walk import attach_layers

__all__ = ["BasicBlock", "Bottleneck", "PreActBasic", "PreActBottleneck", "ResNeXtBlock", "Residual"]


class Block(BothSemantics):
    """What every block shares: its description ``spec``, its layers, named as the description names them (the
    attributes, and their parameters' names: ``residual0_conv1_weight``), the check of its input before Gluon
    runs it, and both numpy semantics (``BothSemantics``). ``kwargs`` are Gluon's (``prefix``, ``params``)."""

    def __init__(self, spec: BlockSpec, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spec = spec
        with self.name_scope():
            shortcut = lambda conv, batch_norm: Shortcut(conv, batch_norm, prefix="downsample_")  # noqa: E731
            attach_layers(self, spec, named_layers(spec), shortcut)
        check_names(self)

    def check_input(self, X: Any) -> None:
        """The identity shortcut needs the input to have the output's shape: a clear error, not a broadcast one.

        Only an NDArray has a shape: inside a hybridized parent the blocks see shapeless Symbols, and there the
        parent (a ResNet's stage) guarantees the shapes."""
        if isinstance(X, mx.nd.NDArray):  # mxnet.numpy arrays too
            specs.check_block_input(self.spec, X.shape[1])

    def forward(self, X: Any) -> Any:
        """Check the input, then run the block: here, before Gluon hands a hybridized block's input to its
        cached graph, since ``hybrid_forward`` never sees it then."""
        self.check_input(X)
        return super().forward(X)


class Residual(Block):
    __doc__ = CLASS_DOCS["Residual"]

    def __init__(self, num_channels: int, use_1x1conv: bool = False, strides: int = 1, **kwargs: Any) -> None:
        super().__init__(specs.residual(num_channels, use_1x1conv, strides), **kwargs)

    def hybrid_forward(self, F: Any, X: Any) -> Any:
        Y = _relu(F, self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.conv3 is not None:
            X = self.conv3(X)
        return _relu(F, Y + X)


class ResNeXtBlock(Block):
    __doc__ = CLASS_DOCS["ResNeXtBlock"]

    def __init__(
        self,
        num_channels: int,
        groups: int,
        bot_mul: float,
        use_1x1conv: bool = False,
        strides: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(specs.resnext(num_channels, groups, bot_mul, use_1x1conv, strides), **kwargs)

    def hybrid_forward(self, F: Any, X: Any) -> Any:
        Y = _relu(F, self.bn1(self.conv1(X)))
        Y = _relu(F, self.bn2(self.conv2(Y)))
        Y = self.bn3(self.conv3(Y))
        if self.conv4 is not None:
            X = self.bn4(self.conv4(X))
        return _relu(F, Y + X)


class BasicBlock(Block):
    __doc__ = CLASS_DOCS["BasicBlock"]

    def __init__(self, num_channels: int, use_1x1conv: bool = False, strides: int = 1, **kwargs: Any) -> None:
        super().__init__(specs.basic(num_channels, use_1x1conv, strides), **kwargs)

    def hybrid_forward(self, F: Any, X: Any) -> Any:
        Y = _relu(F, self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.downsample is not None:
            X = self.downsample(X)
        return _relu(F, Y + X)


class Bottleneck(Block):
    __doc__ = CLASS_DOCS["Bottleneck"]

    def __init__(
        self,
        planes: int,
        use_1x1conv: bool = False,
        strides: int = 1,
        groups: int = 1,
        base_width: int = 64,
        stride_in_1x1: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(specs.bottleneck(planes, use_1x1conv, strides, groups, base_width, stride_in_1x1), **kwargs)

    def hybrid_forward(self, F: Any, X: Any) -> Any:
        Y = _relu(F, self.bn1(self.conv1(X)))
        Y = _relu(F, self.bn2(self.conv2(Y)))
        Y = self.bn3(self.conv3(Y))
        if self.downsample is not None:
            X = self.downsample(X)
        return _relu(F, Y + X)


class PreActBasic(Block):
    __doc__ = CLASS_DOCS["PreActBasic"]

    def __init__(self, num_channels: int, use_1x1conv: bool = False, strides: int = 1, **kwargs: Any) -> None:
        super().__init__(specs.basic(num_channels, use_1x1conv, strides, preact=True), **kwargs)

    def hybrid_forward(self, F: Any, X: Any) -> Any:
        Y = _relu(F, self.bn1(X))
        if self.downsample is not None:
            X = self.downsample(Y)  # the projection reads the pre-activated input
        Y = self.conv1(Y)
        Y = self.conv2(_relu(F, self.bn2(Y)))
        return Y + X


class PreActBottleneck(Block):
    __doc__ = CLASS_DOCS["PreActBottleneck"]

    def __init__(
        self,
        planes: int,
        use_1x1conv: bool = False,
        strides: int = 1,
        groups: int = 1,
        base_width: int = 64,
        stride_in_1x1: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            specs.bottleneck(planes, use_1x1conv, strides, groups, base_width, stride_in_1x1, preact=True), **kwargs
        )

    def hybrid_forward(self, F: Any, X: Any) -> Any:
        Y = _relu(F, self.bn1(X))
        if self.downsample is not None:
            X = self.downsample(Y)  # the projection reads the pre-activated input
        Y = self.conv1(Y)
        Y = self.conv2(_relu(F, self.bn2(Y)))
        Y = self.conv3(_relu(F, self.bn3(Y)))
        return Y + X
