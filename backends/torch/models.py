"""The chapter's ResNet and ResNet-18 as PyTorch ``nn.Module``s (NCHW), and the family's builder functions."""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
from resnet.backends.torch import blocks
from resnet.backends.torch.layers import make_layer
from torch import nn

from resnet import api, specs
from resnet.contract import declared
from resnet.docs import CLASS_DOCS
from resnet.specs import ModelSpec

__all__ = ["ResNet", "ResNet18", *specs.FAMILY]

#: The native block for a block description.
make_block = functools.partial(specs.build_block, blocks)

LAYOUT = declared(__name__).layout


class ResNet(nn.Module):
    __doc__ = CLASS_DOCS["ResNet"]

    def __init__(
        self,
        arch: Sequence[Sequence[int]] | None = None,
        lr: float = specs.DEFAULT_LR,
        num_classes: int = 10,
        *,
        spec: ModelSpec | None = None,
        dtype: str = "float32",
    ) -> None:
        super().__init__()
        self.spec = specs.model_spec(arch, num_classes, spec)
        self.lr = specs.learning_rate(lr)
        dtype = specs.check_dtype(dtype)
        parts: OrderedDict[str, nn.Module] = OrderedDict(b1=self.b1())
        for stage_name, stage in self.spec.stages:  # the book's self.block(...) for the book's arch
            parts[stage_name] = nn.Sequential(*(make_block(b) for b in stage))
        parts["last"] = self.head()
        self.net = nn.Sequential(parts)
        self.to(getattr(torch, dtype))  # lazy layers then create their weights in this precision

    def b1(self) -> nn.Sequential:
        """The stem: convolution, BN, ReLU and max pooling (the book's 7x7/2 convolution and 3x3/2 pooling; no
        pooling in a stem without, such as the multi-GPU ResNet-18's; no BN or ReLU in a pre-activation one)."""
        layers, pool = self.spec.stem.layers(), self.spec.stem.pool
        parts: OrderedDict[str, nn.Module] = OrderedDict(conv=make_layer(layers["conv"]))
        if "bn" in layers:  # not in a pre-activation stem
            parts.update(bn=make_layer(layers["bn"]), relu=nn.ReLU())
        if pool is not None:
            parts["pool"] = nn.MaxPool2d(pool.kernel, pool.stride, pool.padding)
        return nn.Sequential(parts)

    def block(self, num_residuals: int, num_channels: int, first_block: bool = False) -> nn.Sequential:
        """A stage of ``num_residuals`` blocks; all but the first stage start by halving height and width."""
        return nn.Sequential(*(make_block(b) for b in specs.book_stage(num_residuals, num_channels, first_block)))

    def head(self) -> nn.Sequential:
        """The head: global average pooling and a dense layer to the classes (after BN and ReLU in ResNet v2)."""
        layers = self.spec.head.layers()
        preact = OrderedDict(bn=make_layer(layers["bn"]), relu=nn.ReLU()) if "bn" in layers else OrderedDict()
        return nn.Sequential(
            OrderedDict(**preact, pool=nn.AdaptiveAvgPool2d((1, 1)), flatten=nn.Flatten(), fc=make_layer(layers["fc"]))
        )

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        specs.check_model_input(self.spec, X.shape[1])
        return self.net(X)

    def layer_summary(self, X_shape: Sequence[int]) -> None:
        """The book's method: print each part's output shape for an input of ``X_shape`` (NCHW, as in the
        book's PyTorch code: ``model.layer_summary((1, 1, 96, 96))``); ``resnet.layer_summary``."""
        api.layer_summary(self, X_shape, layout=LAYOUT)

    def apply_init(self, inputs: Sequence[torch.Tensor], init: Callable[[nn.Module], None] | None = None) -> None:
        """The book's method: run the model once on ``inputs`` (a list of tensors, the model's arguments) to
        create the lazy layers' weights, then ``self.apply(init)`` when ``init`` is given, e.g. the book's
        ``model.apply_init([X], d2l.init_cnn)``.

        The pass runs in inference mode without gradients, so, unlike the book's (which runs in the model's
        mode), it leaves BatchNorm's running statistics at their initial values, as ``resnet.build`` does.
        """
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                self(*inputs)
        finally:
            self.train(was_training)
        if init is not None:
            self.apply(init)


class ResNet18(ResNet):
    __doc__ = CLASS_DOCS["ResNet18"]

    def __init__(self, lr: float = specs.DEFAULT_LR, num_classes: int = 10, *, dtype: str = "float32") -> None:
        super().__init__(specs.RESNET18_ARCH, lr, num_classes, dtype=dtype)


# The ResNet family of the chapter's exercises, in torchvision's convention (resnet18() ... resnext101_32x8d()),
# and the book's multi-GPU ResNet-18 (resnet18_multigpu()).
globals().update(specs.family_builders(ResNet))
