"""The chapter's residual and ResNeXt blocks and the family's blocks as PyTorch ``nn.Module``s (NCHW)."""

from __future__ import annotations

import torch
from resnet.backends.torch.layers import Shortcut, make_layer
from torch import nn
from torch.nn import functional as F

from resnet import specs
from resnet.docs import CLASS_DOCS
from resnet.specs import BlockSpec
from resnet.walk import attach_layers

__all__ = ["BasicBlock", "Bottleneck", "PreActBasic", "PreActBottleneck", "ResNeXtBlock", "Residual"]


class Block(nn.Module):
    """What every block shares: its description ``spec`` and its layers, named as the description names them."""

    def __init__(self, spec: BlockSpec) -> None:
        super().__init__()
        self.spec = spec
        attach_layers(self, spec, make_layer, Shortcut)

    def check_input(self, X: torch.Tensor) -> None:
        """The identity shortcut needs the input to have the output's shape: a clear error, not a broadcast one."""
        specs.check_block_input(self.spec, X.shape[1])


class Residual(Block):
    __doc__ = CLASS_DOCS["Residual"]

    def __init__(self, num_channels: int, use_1x1conv: bool = False, strides: int = 1) -> None:
        super().__init__(specs.residual(num_channels, use_1x1conv, strides))

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        self.check_input(X)
        Y = F.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.conv3 is not None:
            X = self.conv3(X)
        return F.relu(Y + X)


class ResNeXtBlock(Block):
    __doc__ = CLASS_DOCS["ResNeXtBlock"]

    def __init__(
        self, num_channels: int, groups: int, bot_mul: float, use_1x1conv: bool = False, strides: int = 1
    ) -> None:
        super().__init__(specs.resnext(num_channels, groups, bot_mul, use_1x1conv, strides))

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        self.check_input(X)
        Y = F.relu(self.bn1(self.conv1(X)))
        Y = F.relu(self.bn2(self.conv2(Y)))
        Y = self.bn3(self.conv3(Y))
        if self.conv4 is not None:
            X = self.bn4(self.conv4(X))
        return F.relu(Y + X)


class BasicBlock(Block):
    __doc__ = CLASS_DOCS["BasicBlock"]

    def __init__(self, num_channels: int, use_1x1conv: bool = False, strides: int = 1) -> None:
        super().__init__(specs.basic(num_channels, use_1x1conv, strides))

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        self.check_input(X)
        Y = F.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.downsample is not None:
            X = self.downsample(X)
        return F.relu(Y + X)


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
    ) -> None:
        super().__init__(specs.bottleneck(planes, use_1x1conv, strides, groups, base_width, stride_in_1x1))

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        self.check_input(X)
        Y = F.relu(self.bn1(self.conv1(X)))
        Y = F.relu(self.bn2(self.conv2(Y)))
        Y = self.bn3(self.conv3(Y))
        if self.downsample is not None:
            X = self.downsample(X)
        return F.relu(Y + X)


class PreActBasic(Block):
    __doc__ = CLASS_DOCS["PreActBasic"]

    def __init__(self, num_channels: int, use_1x1conv: bool = False, strides: int = 1) -> None:
        super().__init__(specs.basic(num_channels, use_1x1conv, strides, preact=True))

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        self.check_input(X)
        Y = F.relu(self.bn1(X))
        if self.downsample is not None:
            X = self.downsample(Y)  # the projection reads the pre-activated input
        Y = self.conv1(Y)
        Y = self.conv2(F.relu(self.bn2(Y)))
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
    ) -> None:
        super().__init__(specs.bottleneck(planes, use_1x1conv, strides, groups, base_width, stride_in_1x1, preact=True))

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        self.check_input(X)
        Y = F.relu(self.bn1(X))
        if self.downsample is not None:
            X = self.downsample(Y)  # the projection reads the pre-activated input
        Y = self.conv1(Y)
        Y = self.conv2(F.relu(self.bn2(Y)))
        Y = self.conv3(F.relu(self.bn3(Y)))
        return Y + X
