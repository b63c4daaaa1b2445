"""The chapter's ResNet and ResNet-18 as Flax ``linen`` Modules (NHWC), and the family's builder functions."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
from resnet.backends.jax import blocks
from resnet.backends.jax.blocks import hashable
from resnet.backends.jax.layers import make_layer, max_pool

from resnet import api, specs
from resnet.contract import declared
from resnet.docs import CLASS_DOCS, FLAX_TRAINING_FIELD
from resnet.specs import BlockSpec, HeadSpec, ModelSpec, StemSpec

__all__ = ["ResNet", "ResNet18", *specs.FAMILY]

LAYOUT = declared(__name__).layout

#: The native block for a block description (options: the fields ``training``, Flax's ``name`` or ``parent``).
make_block = functools.partial(specs.build_block, blocks)


# Flax's nn.Sequential names its children layers_0, layers_1...; these three small Modules give the
# parameter tree the canonical names instead (b1/conv, b2/0/conv1, last/fc), as torch's module tree has.


class Stem(nn.Module):
    """The book's ``b1``: convolution, BN, ReLU and max pooling (7x7/2 and 3x3/2 in the chapter's stem; no pooling
    in a stem without, such as the multi-GPU ResNet-18's; no BN or ReLU in a pre-activation one)."""

    spec: StemSpec = StemSpec()
    training: bool = True

    def setup(self) -> None:
        for name, layer in self.spec.layers().items():  # conv, bn (not in a pre-activation stem)
            setattr(self, name, make_layer(layer, self.training))

    def __call__(self, X: jax.Array) -> jax.Array:
        pool = self.spec.pool
        X = self.conv(X)
        if not self.spec.preact:
            X = nn.relu(self.bn(X))
        if pool is None:
            return X
        return max_pool(X, pool.kernel, pool.stride, pool.padding)  # padded with -inf: padded cells never win


class Stage(nn.Module):
    """A stage of blocks, named ``0``, ``1``... in the parameter tree.

    ``stage[i]`` and ``len(stage)`` work as on torch's ``nn.Sequential``; ``stage[i]`` is a new, unbound
    block built from the same description (a Flax Module is a description; the weights live in variables).
    """

    blocks: tuple[BlockSpec, ...]
    training: bool = True

    def setup(self) -> None:
        self.layers = [make_block(spec, training=self.training, name=str(i)) for i, spec in enumerate(self.blocks)]

    def __call__(self, X: jax.Array) -> jax.Array:
        for block in self.layers:
            X = block(X)
        return X

    @nn.nowrap
    def __getitem__(self, index: int) -> nn.Module:
        return make_block(self.blocks[index], training=self.training, parent=None)

    @nn.nowrap
    def __len__(self) -> int:
        return len(self.blocks)


class Head(nn.Module):
    """The book's ``last``: global average pooling (a mean over height and width) and a dense layer to the
    classes; after BN and ReLU in a pre-activation model (ResNet v2)."""

    spec: HeadSpec
    training: bool = True

    def setup(self) -> None:
        for name, layer in self.spec.layers().items():  # bn (pre-activation models), fc
            setattr(self, name, make_layer(layer, self.training))

    def __call__(self, X: jax.Array) -> jax.Array:
        if self.spec.preact:
            X = nn.relu(self.bn(X))
        return self.fc(X.mean(axis=(1, 2)))


class ResNet(nn.Module):
    __doc__ = (
        CLASS_DOCS["ResNet"]
        + FLAX_TRAINING_FIELD
        + """
Flax's layers compute in their inputs' and weights' precision; float64 needs JAX's x64 mode, which a float64
model turns on for the process (``jax_enable_x64``: JAX has no per-array switch).
"""
    )

    # The book's fields, in its order (ResNet(arch, lr, num_classes, training)), then this package's, by keyword.
    arch: Sequence[Sequence[int]] | None = None
    lr: float = specs.DEFAULT_LR
    num_classes: int = 10
    training: bool = True
    spec: ModelSpec | None = dataclasses.field(default=None, kw_only=True)
    dtype: str = dataclasses.field(default="float32", kw_only=True)

    def __post_init__(self) -> None:
        # ValueError now, not at the first init; the book's arch becomes its description.
        object.__setattr__(self, "spec", specs.model_spec(self.arch, self.num_classes, self.spec))
        object.__setattr__(self, "arch", hashable(self.arch))
        object.__setattr__(self, "lr", specs.learning_rate(self.lr))
        object.__setattr__(self, "dtype", specs.check_dtype(self.dtype))
        if self.dtype == "float64" and not jax.config.jax_enable_x64:
            jax.config.update("jax_enable_x64", True)
        super().__post_init__()

    def setup(self) -> None:
        # Named at creation, so the parameter tree has the canonical names b1, b2..., last.
        parts = [self.b1(name="b1")]
        for stage_name, stage in self.spec.stages:  # the book's self.block(...) for the book's arch
            parts.append(Stage(stage, self.training, name=stage_name))
        parts.append(self.head(name="last"))
        self.net = parts

    @nn.nowrap
    def b1(self, name: str | None = None) -> Stem:
        """The stem: convolution, BN, ReLU and max pooling, as ``spec.stem`` describes (no BN or ReLU in a
        pre-activation stem; ``name``: the Flax name, which the model gives its parts)."""
        return Stem(self.spec.stem, self.training, name=name)

    @nn.nowrap
    def block(self, num_residuals: int, num_channels: int, first_block: bool = False, name: str | None = None) -> Stage:
        """A stage of ``num_residuals`` blocks; all but the first stage start by halving height and width
        (``name``: the Flax name, which the model gives its parts)."""
        return Stage(specs.book_stage(num_residuals, num_channels, first_block), self.training, name=name)

    @nn.nowrap
    def head(self, name: str | None = None) -> Head:
        """The head: global average pooling and a dense layer to the classes (after BN and ReLU in ResNet v2)
        (``name``: the Flax name, which the model gives its parts)."""
        return Head(self.spec.head, self.training, name=name)

    def __call__(self, X: jax.Array) -> jax.Array:
        specs.check_model_input(self.spec, X.shape[-1])
        for part in self.net:
            X = part(X)
        return X

    def part_outputs(self, X: jax.Array) -> list[tuple[str, jax.Array]]:
        """(name, output) of each top-level part: ``b1``, the stages, ``last``."""
        outputs = []
        for part in self.net:
            X = part(X)
            outputs.append((part.name, X))
        return outputs

    @nn.nowrap
    def layer_summary(self, X_shape: Sequence[int]) -> None:
        """The book's method: print each top-level part (``b1``, the stages, ``last``) with its output shape,
        for an NHWC input shape ``X_shape`` (the book's ``ResNet18(training=False).layer_summary((1, 96, 96,
        1))``), shapes printed NHWC; ``resnet.layer_summary(model, input_shape)`` prints the same in NCHW."""
        api.layer_summary(self, X_shape, layout=LAYOUT)


class ResNet18(ResNet):
    __doc__ = CLASS_DOCS["ResNet18"] + FLAX_TRAINING_FIELD

    # Fixed, not constructor arguments, so that the book's ResNet18(lr, num_classes, training) come first
    # (Flax leaves fields outside __init__ out of comparisons and hashes: the class stands for them).
    arch: Sequence[Sequence[int]] | None = dataclasses.field(default=specs.RESNET18_ARCH, init=False)
    spec: ModelSpec | None = dataclasses.field(default=None, init=False)


# The ResNet family of the chapter's exercises, in torchvision's convention (resnet18() ... resnext101_32x8d()),
# and the book's multi-GPU ResNet-18 (resnet18_multigpu()).
globals().update(specs.family_builders(ResNet))
