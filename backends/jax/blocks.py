"""The chapter's residual and ResNeXt blocks and the family's blocks as Flax ``linen`` Modules (NHWC)."""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
from resnet.backends.jax.layers import Shortcut, make_layer

from resnet import specs
from resnet.docs import CLASS_DOCS, FLAX_TRAINING_FIELD
from resnet.specs import BlockSpec
from resnet.walk import attach_layers

__all__ = ["BasicBlock", "Bottleneck", "PreActBasic", "PreActBottleneck", "ResNeXtBlock", "Residual"]


def hashable(value: Any) -> Any:
    """Lists as tuples, recursively: jax.jit takes a Module as a static argument, so it must hash."""
    return tuple(hashable(v) for v in value) if isinstance(value, (list, tuple)) else value


class Block(nn.Module):
    """What every block shares: its description ``spec`` (a property of its fields, in each block) and its
    layers, named as the description names them. A Flax Module is a dataclass: the fields are the block's
    constructor arguments, declared in each block, then the book's ``training``."""

    def __post_init__(self) -> None:
        _ = self.spec  # the fields checked: ValueError now, not at the first init
        object.__setattr__(self, "strides", hashable(self.strides))
        super().__post_init__()

    @property
    def spec(self) -> BlockSpec:
        """The architecture description the block is built from."""
        raise NotImplementedError(f"{type(self).__name__} must describe itself with a spec property")

    def setup(self) -> None:
        attach_layers(
            self,
            self.spec,
            functools.partial(make_layer, training=self.training),
            functools.partial(Shortcut, training=self.training),
        )

    @nn.nowrap
    def check_input(self, X: jax.Array) -> None:
        """The identity shortcut needs the input to have the output's shape: a clear error, not a broadcast one."""
        specs.check_block_input(self.spec, X.shape[-1])


class Residual(Block):
    __doc__ = CLASS_DOCS["Residual"] + FLAX_TRAINING_FIELD

    num_channels: int
    use_1x1conv: bool = False
    strides: int | tuple[int, int] = 1
    training: bool = True

    @property
    def spec(self) -> specs.ResidualSpec:
        """The architecture description the block is built from."""
        return specs.residual(self.num_channels, self.use_1x1conv, self.strides)

    def __call__(self, X: jax.Array) -> jax.Array:
        self.check_input(X)
        Y = nn.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.conv3 is not None:
            X = self.conv3(X)
        return nn.relu(Y + X)


class ResNeXtBlock(Block):
    __doc__ = CLASS_DOCS["ResNeXtBlock"] + FLAX_TRAINING_FIELD

    num_channels: int
    groups: int
    bot_mul: float
    use_1x1conv: bool = False
    strides: int | tuple[int, int] = 1
    training: bool = True

    @property
    def spec(self) -> specs.ResNeXtSpec:
        """The architecture description the block is built from."""
        return specs.resnext(self.num_channels, self.groups, self.bot_mul, self.use_1x1conv, self.strides)

    def __call__(self, X: jax.Array) -> jax.Array:
        self.check_input(X)
        Y = nn.relu(self.bn1(self.conv1(X)))
        Y = nn.relu(self.bn2(self.conv2(Y)))
        Y = self.bn3(self.conv3(Y))
        if self.conv4 is not None:
            X = self.bn4(self.conv4(X))
        return nn.relu(Y + X)


class BasicBlock(Block):
    __doc__ = CLASS_DOCS["BasicBlock"] + FLAX_TRAINING_FIELD

    num_channels: int
    use_1x1conv: bool = False
    strides: int | tuple[int, int] = 1
    training: bool = True

    @property
    def spec(self) -> specs.BasicSpec:
        """The architecture description the block is built from."""
        return specs.basic(self.num_channels, self.use_1x1conv, self.strides)

    def __call__(self, X: jax.Array) -> jax.Array:
        self.check_input(X)
        Y = nn.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.downsample is not None:
            X = self.downsample(X)
        return nn.relu(Y + X)


class Bottleneck(Block):
    __doc__ = CLASS_DOCS["Bottleneck"] + FLAX_TRAINING_FIELD

    planes: int
    use_1x1conv: bool = False
    strides: int | tuple[int, int] = 1
    groups: int = 1
    base_width: int = 64
    stride_in_1x1: bool = False
    training: bool = True

    @property
    def spec(self) -> specs.BottleneckSpec:
        """The architecture description the block is built from."""
        return specs.bottleneck(
            self.planes, self.use_1x1conv, self.strides, self.groups, self.base_width, self.stride_in_1x1
        )

    def __call__(self, X: jax.Array) -> jax.Array:
        self.check_input(X)
        Y = nn.relu(self.bn1(self.conv1(X)))
        Y = nn.relu(self.bn2(self.conv2(Y)))
        Y = self.bn3(self.conv3(Y))
        if self.downsample is not None:
            X = self.downsample(X)
        return nn.relu(Y + X)


class PreActBasic(Block):
    __doc__ = CLASS_DOCS["PreActBasic"] + FLAX_TRAINING_FIELD

    num_channels: int
    use_1x1conv: bool = False
    strides: int | tuple[int, int] = 1
    training: bool = True

    @property
    def spec(self) -> specs.BasicSpec:
        """The architecture description the block is built from."""
        return specs.basic(self.num_channels, self.use_1x1conv, self.strides, preact=True)

    def __call__(self, X: jax.Array) -> jax.Array:
        self.check_input(X)
        Y = nn.relu(self.bn1(X))
        if self.downsample is not None:
            X = self.downsample(Y)  # the projection reads the pre-activated input
        Y = self.conv1(Y)
        Y = self.conv2(nn.relu(self.bn2(Y)))
        return Y + X


class PreActBottleneck(Block):
    __doc__ = CLASS_DOCS["PreActBottleneck"] + FLAX_TRAINING_FIELD

    planes: int
    use_1x1conv: bool = False
    strides: int | tuple[int, int] = 1
    groups: int = 1
    base_width: int = 64
    stride_in_1x1: bool = False
    training: bool = True

    @property
    def spec(self) -> specs.BottleneckSpec:
        """The architecture description the block is built from."""
        return specs.bottleneck(
            self.planes, self.use_1x1conv, self.strides, self.groups, self.base_width, self.stride_in_1x1, preact=True
        )

    def __call__(self, X: jax.Array) -> jax.Array:
        self.check_input(X)
        Y = nn.relu(self.bn1(X))
        if self.downsample is not None:
            X = self.downsample(Y)  # the projection reads the pre-activated input
        Y = self.conv1(Y)
        Y = self.conv2(nn.relu(self.bn2(Y)))
        Y = self.conv3(nn.relu(self.bn3(Y)))
        return Y + X
