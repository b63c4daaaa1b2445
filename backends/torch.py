"""The chapter's models as PyTorch ``nn.Module``s (NCHW), and the hooks the common API calls.

The four backend modules read side by side: the same names in the same order with the same docstrings,
so that a diff between two of them shows only what differs between the frameworks.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from resnet import specs
from resnet.specs import BatchNormSpec, BlockSpec, ConvSpec, DenseSpec, LayerSpec, ModelSpec

NAME = "torch"
LAYOUT = "NCHW"

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "PreActBasic",
    "PreActBottleneck",
    "ResNeXtBlock",
    "ResNet",
    "ResNet18",
    "Residual",
    *specs.FAMILY,
]


# ---------------------------------------------------------------------------------------------- layers


class BatchNorm2d(nn.BatchNorm2d):
    """BatchNorm whose running variance averages the *biased* batch variance, as Keras, Flax and MXNet do.

    PyTorch's own BatchNorm averages the unbiased variance; without this the running statistics, and so
    every evaluation after training, would differ between backends.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        # native_batch_norm also returns the batch mean and 1/sqrt(var + eps): the biased variance for free.
        y, mean, invstd = torch.ops.aten.native_batch_norm(x, self.weight, self.bias, None, None, True, 0.0, self.eps)
        if _PENDING_STATISTICS is not None:  # inside a train step: updated with every other layer's at its end
            _PENDING_STATISTICS.append((self, mean, invstd))
        else:
            _update_statistics([(self, mean, invstd)])
        return y


# (layer, batch mean, batch 1/sqrt(var + eps)) of each BatchNorm in the running train step's forward pass.
_PENDING_STATISTICS: list[tuple[BatchNorm2d, torch.Tensor, torch.Tensor]] | None = None


def _update_statistics(pending: Sequence[tuple[BatchNorm2d, torch.Tensor, torch.Tensor]]) -> None:
    """Move the layers' running averages towards their batch statistics, all layers in a few fused (foreach)
    operations: per layer, three small kernels each would make a GPU step wait on kernel launches."""
    alike: dict[tuple[float, float], list[tuple[BatchNorm2d, torch.Tensor, torch.Tensor]]] = {}
    for item in pending:  # one group unless somebody changed a layer's eps or momentum
        alike.setdefault((item[0].eps, item[0].momentum), []).append(item)
    with torch.no_grad():
        for (eps, momentum), items in alike.items():
            layers = [layer for layer, _, _ in items]
            variances = torch._foreach_pow([invstd for _, _, invstd in items], -2)
            torch._foreach_sub_(variances, eps)
            averages = [layer.running_mean for layer in layers] + [layer.running_var for layer in layers]
            torch._foreach_lerp_(averages, [mean for _, mean, _ in items] + list(variances), momentum)
            torch._foreach_add_([layer.num_batches_tracked for layer in layers], 1)


@contextlib.contextmanager
def _statistics_at_the_end() -> Iterator[None]:
    """Within: BatchNorm layers in training mode queue their running-average updates, made together on exit."""
    global _PENDING_STATISTICS
    outer, _PENDING_STATISTICS = _PENDING_STATISTICS, []
    try:
        yield
        pending = _PENDING_STATISTICS
    finally:
        _PENDING_STATISTICS = outer
    _update_statistics(pending)


class LazyBatchNorm2d(nn.LazyBatchNorm2d):
    """``BatchNorm2d`` above, with its channel count inferred at the first call like the book's."""

    cls_to_become = BatchNorm2d


def make_layer(layer: LayerSpec) -> nn.Module:
    """The native layer for a layer description, its input size inferred at the first call."""
    if isinstance(layer, ConvSpec):
        return nn.LazyConv2d(
            layer.out_channels, layer.kernel, layer.stride, layer.padding, groups=layer.groups, bias=layer.bias
        )
    if isinstance(layer, BatchNormSpec):
        return LazyBatchNorm2d(eps=specs.BN_EPSILON, momentum=specs.BN_MOMENTUM)
    if isinstance(layer, DenseSpec):
        return nn.LazyLinear(layer.out_features)
    raise TypeError(f"unknown layer description {layer!r}")


class Shortcut(nn.Module):
    """A projection shortcut, ``downsample`` in the family's blocks: a 1x1 convolution ``conv`` with the block's
    stride, then BN ``bn`` (none in a pre-activation block)."""

    def __init__(self, conv_spec: ConvSpec, batch_norm: bool = True) -> None:
        super().__init__()
        self.conv = make_layer(conv_spec)
        self.bn = make_layer(BatchNormSpec()) if batch_norm else None

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        X = self.conv(X)
        return X if self.bn is None else self.bn(X)


def _add_layers(module: nn.Module, spec: BlockSpec) -> None:
    """Create a block's layers as attributes named as in the description (conv1, bn1, ...); the layers of a
    projection shortcut, ``downsample.conv`` and ``downsample.bn``, go into a ``Shortcut`` named ``downsample``."""
    layers = spec.layers()
    for name, layer in layers.items():
        if not name.startswith("downsample."):
            setattr(module, name, make_layer(layer))
    if "downsample.conv" in layers:
        module.downsample = Shortcut(layers["downsample.conv"], "downsample.bn" in layers)


def _check_input(module: nn.Module, x: torch.Tensor) -> None:
    # The identity shortcut needs the input to have the output's shape; say so instead of a broadcast error.
    if not module.spec.use_1x1conv:
        specs.check_block_input(module.spec, x.shape[1])


# ---------------------------------------------------------------------------------------------- blocks


class Residual(nn.Module):
    """The residual block of ResNet: 3x3 conv, BN, ReLU, 3x3 conv, BN, plus the shortcut, then ReLU.

    Args:
        num_channels: output channels of both 3x3 convolutions.
        use_1x1conv: put a 1x1 convolution on the shortcut, to change channels or resolution.
        strides: stride of the first 3x3 convolution (and of the 1x1 shortcut), 1 or 2.
    """

    def __init__(self, num_channels: int, use_1x1conv: bool = False, strides: int = 1) -> None:
        super().__init__()
        self.spec = specs.residual(num_channels, use_1x1conv, strides)
        _add_layers(self, self.spec)
        if not self.spec.use_1x1conv:
            self.conv3 = None

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        _check_input(self, X)
        Y = F.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.conv3 is not None:
            X = self.conv3(X)
        return F.relu(Y + X)


class ResNeXtBlock(nn.Module):
    """The ResNeXt block: 1x1 conv, grouped 3x3 conv, 1x1 conv (each with BN), plus the shortcut, then ReLU.

    Args:
        num_channels: output channels.
        groups: the number of groups (cardinality) of the 3x3 convolution, as in the chapter's text and the
            ResNeXt paper; each group has ``round(num_channels * bot_mul) // groups`` channels. The book's
            code passes ``bot_channels // groups`` to the convolution, so there ``groups`` is the width of
            each group: the book's ``ResNeXtBlock(32, 16, 1)`` (2 groups of 16) is ``ResNeXtBlock(32, 2, 1)``.
        bot_mul: bottleneck width as a multiple of ``num_channels``.
        use_1x1conv: put a 1x1 convolution and BN on the shortcut.
        strides: stride of the 3x3 convolution (and of the shortcut), 1 or 2.
    """

    def __init__(
        self, num_channels: int, groups: int, bot_mul: float, use_1x1conv: bool = False, strides: int = 1
    ) -> None:
        super().__init__()
        self.spec = specs.resnext(num_channels, groups, bot_mul, use_1x1conv, strides)
        _add_layers(self, self.spec)
        if not self.spec.use_1x1conv:
            self.conv4 = self.bn4 = None

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        _check_input(self, X)
        Y = F.relu(self.bn1(self.conv1(X)))
        Y = F.relu(self.bn2(self.conv2(Y)))
        Y = self.bn3(self.conv3(Y))
        if self.conv4 is not None:
            X = self.bn4(self.conv4(X))
        return F.relu(Y + X)


class BasicBlock(nn.Module):
    """The basic block of ResNet-18 and -34 in torchvision's convention: 3x3 conv, BN, ReLU, 3x3 conv, BN, plus
    the shortcut, then ReLU. Unlike the chapter's ``Residual``: no convolution biases, and the projection
    shortcut ``downsample`` is a 1x1 convolution followed by BN.

    Args:
        num_channels: output channels of both 3x3 convolutions.
        use_1x1conv: a projection shortcut (1x1 convolution and BN), to change channels or resolution.
        strides: stride of the first 3x3 convolution (and of the shortcut), 1 or 2.
    """

    def __init__(self, num_channels: int, use_1x1conv: bool = False, strides: int = 1) -> None:
        super().__init__()
        self.spec = specs.basic(num_channels, use_1x1conv, strides)
        _add_layers(self, self.spec)
        if not self.spec.use_1x1conv:
            self.downsample = None

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        _check_input(self, X)
        Y = F.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.downsample is not None:
            X = self.downsample(X)
        return F.relu(Y + X)


class Bottleneck(nn.Module):
    """The bottleneck block of ResNet-50/101/152 and ResNeXt in torchvision's convention: 1x1 conv, BN, ReLU,
    3x3 conv (grouped for ResNeXt), BN, ReLU, 1x1 conv, BN, plus the shortcut, then ReLU. No convolution
    biases; the projection shortcut ``downsample`` is a 1x1 convolution followed by BN.

    Args:
        planes: the output has ``4 * planes`` channels; the inner convolutions ``int(planes * base_width / 64)
            * groups`` (torchvision's rule).
        use_1x1conv: a projection shortcut (1x1 convolution and BN), to change channels or resolution.
        strides: stride of the 3x3 convolution (torchvision's "ResNet v1.5") and of the shortcut, 1 or 2.
        groups: the number of groups (cardinality) of the 3x3 convolution: 32 for ResNeXt.
        base_width: channels per group at ``planes=64`` (torchvision's ``width_per_group``): 4 for ResNeXt-50 32x4d.
        stride_in_1x1: put the stride on the first 1x1 convolution instead, as the ResNet paper does.
    """

    def __init__(
        self,
        planes: int,
        use_1x1conv: bool = False,
        strides: int = 1,
        groups: int = 1,
        base_width: int = 64,
        stride_in_1x1: bool = False,
    ) -> None:
        super().__init__()
        self.spec = specs.bottleneck(planes, use_1x1conv, strides, groups, base_width, stride_in_1x1)
        _add_layers(self, self.spec)
        if not self.spec.use_1x1conv:
            self.downsample = None

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        _check_input(self, X)
        Y = F.relu(self.bn1(self.conv1(X)))
        Y = F.relu(self.bn2(self.conv2(Y)))
        Y = self.bn3(self.conv3(Y))
        if self.downsample is not None:
            X = self.downsample(X)
        return F.relu(Y + X)


class PreActBasic(nn.Module):
    """The pre-activation basic block of ResNet v2 (He et al. 2016, "Identity Mappings"): BN, ReLU, 3x3 conv,
    BN, ReLU, 3x3 conv, plus the shortcut, with nothing after the addition. The projection shortcut
    ``downsample`` is a bare 1x1 convolution on the pre-activated input; no convolution biases.

    Args:
        num_channels: output channels of both 3x3 convolutions.
        use_1x1conv: a projection shortcut (1x1 convolution), to change channels or resolution.
        strides: stride of the first 3x3 convolution (and of the shortcut), 1 or 2.
    """

    def __init__(self, num_channels: int, use_1x1conv: bool = False, strides: int = 1) -> None:
        super().__init__()
        self.spec = specs.basic(num_channels, use_1x1conv, strides, preact=True)
        _add_layers(self, self.spec)
        if not self.spec.use_1x1conv:
            self.downsample = None

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        _check_input(self, X)
        Y = F.relu(self.bn1(X))
        if self.downsample is not None:
            X = self.downsample(Y)  # the projection reads the pre-activated input
        Y = self.conv1(Y)
        Y = self.conv2(F.relu(self.bn2(Y)))
        return Y + X


class PreActBottleneck(nn.Module):
    """The pre-activation bottleneck block of ResNet v2: BN, ReLU, 1x1 conv, BN, ReLU, 3x3 conv, BN, ReLU, 1x1
    conv, plus the shortcut, with nothing after the addition. The projection shortcut ``downsample`` is a bare
    1x1 convolution on the pre-activated input; no convolution biases.

    Args:
        planes: the output has ``4 * planes`` channels; the inner convolutions ``int(planes * base_width / 64)
            * groups`` (torchvision's rule).
        use_1x1conv: a projection shortcut (1x1 convolution), to change channels or resolution.
        strides: stride of the 3x3 convolution (and of the shortcut), 1 or 2.
        groups: the number of groups (cardinality) of the 3x3 convolution.
        base_width: channels per group at ``planes=64`` (torchvision's ``width_per_group``).
        stride_in_1x1: put the stride on the first 1x1 convolution instead, as the ResNet paper does.
    """

    def __init__(
        self,
        planes: int,
        use_1x1conv: bool = False,
        strides: int = 1,
        groups: int = 1,
        base_width: int = 64,
        stride_in_1x1: bool = False,
    ) -> None:
        super().__init__()
        self.spec = specs.bottleneck(planes, use_1x1conv, strides, groups, base_width, stride_in_1x1, preact=True)
        _add_layers(self, self.spec)
        if not self.spec.use_1x1conv:
            self.downsample = None

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        _check_input(self, X)
        Y = F.relu(self.bn1(X))
        if self.downsample is not None:
            X = self.downsample(Y)  # the projection reads the pre-activated input
        Y = self.conv1(Y)
        Y = self.conv2(F.relu(self.bn2(Y)))
        Y = self.conv3(F.relu(self.bn3(Y)))
        return Y + X


# ---------------------------------------------------------------------------------------------- models


def make_block(spec: BlockSpec) -> nn.Module:
    """The native block for a block description."""
    if isinstance(spec, specs.ResidualSpec):
        return Residual(spec.num_channels, spec.use_1x1conv, spec.strides)
    if isinstance(spec, specs.ResNeXtSpec):
        return ResNeXtBlock(spec.num_channels, spec.groups, spec.bot_mul, spec.use_1x1conv, spec.strides)
    if isinstance(spec, specs.BasicSpec):
        return (PreActBasic if spec.preact else BasicBlock)(spec.num_channels, spec.use_1x1conv, spec.strides)
    return (PreActBottleneck if spec.preact else Bottleneck)(
        spec.planes, spec.use_1x1conv, spec.strides, spec.groups, spec.base_width, spec.stride_in_1x1
    )


class ResNet(nn.Module):
    """The chapter's ResNet: the stem ``b1``, one stage per ``arch`` entry (``b2``, ``b3``...), the head ``last``.

    Args:
        arch: one ``(num_residuals, num_channels)`` pair per stage, e.g. ``((2, 64), (2, 128), (2, 256),
            (2, 512))`` for ResNet-18.
        num_classes: outputs of the final dense layer.
        spec: instead of ``arch`` and ``num_classes``, any model description (``resnet.specs.ModelSpec``), as
            the family's builders (``resnet50()``...) pass: the same parts, from its stem, stages and head.
        dtype: ``"float32"`` (the default) or ``"float64"``, the precision of the weights and the computation.
    """

    def __init__(
        self,
        arch: Sequence[Sequence[int]] | None = None,
        num_classes: int = 10,
        *,
        spec: ModelSpec | None = None,
        dtype: str = "float32",
    ) -> None:
        super().__init__()
        self.spec = specs.model_spec(arch, num_classes, spec)
        dtype = specs.check_dtype(dtype)
        parts: OrderedDict[str, nn.Module] = OrderedDict(b1=self.b1())
        for stage_name, blocks in self.spec.stages:  # the book's self.block(...) for the book's arch
            parts[stage_name] = nn.Sequential(*(make_block(b) for b in blocks))
        parts["last"] = self.head()
        self.net = nn.Sequential(parts)
        self.to(getattr(torch, dtype))  # lazy layers then create their weights in this precision

    def b1(self) -> nn.Sequential:
        """The stem: 7x7 convolution with stride 2, BN, ReLU, 3x3 max pooling with stride 2."""
        layers, pool = self.spec.stem.layers(), self.spec.stem.pool
        return nn.Sequential(
            OrderedDict(
                conv=make_layer(layers["conv"]),
                bn=make_layer(layers["bn"]),
                relu=nn.ReLU(),
                pool=nn.MaxPool2d(pool.kernel, pool.stride, pool.padding),
            )
        )

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


class ResNet18(ResNet):
    """The book's ResNet-18: four stages of two residual blocks, 64 to 512 channels."""

    def __init__(self, num_classes: int = 10, *, dtype: str = "float32") -> None:
        super().__init__(specs.RESNET18_ARCH, num_classes, dtype=dtype)


# The ResNet family of the chapter's exercises, in torchvision's convention (see resnet.specs.FAMILY).
resnet18 = specs.FAMILY["resnet18"].builder(ResNet)
resnet34 = specs.FAMILY["resnet34"].builder(ResNet)
resnet50 = specs.FAMILY["resnet50"].builder(ResNet)
resnet101 = specs.FAMILY["resnet101"].builder(ResNet)
resnet152 = specs.FAMILY["resnet152"].builder(ResNet)
preact_resnet18 = specs.FAMILY["preact_resnet18"].builder(ResNet)
preact_resnet34 = specs.FAMILY["preact_resnet34"].builder(ResNet)
preact_resnet50 = specs.FAMILY["preact_resnet50"].builder(ResNet)
preact_resnet101 = specs.FAMILY["preact_resnet101"].builder(ResNet)
preact_resnet152 = specs.FAMILY["preact_resnet152"].builder(ResNet)
resnext50_32x4d = specs.FAMILY["resnext50_32x4d"].builder(ResNet)
resnext101_32x8d = specs.FAMILY["resnext101_32x8d"].builder(ResNet)


# ------------------------------------------------------------------------------- common-API hooks


def is_native_model(obj: Any) -> bool:
    """True if ``obj`` is a block or model of this backend."""
    return isinstance(obj, (Residual, ResNeXtBlock, BasicBlock, Bottleneck, PreActBasic, PreActBottleneck, ResNet))


def spec_of(model: Any) -> BlockSpec | ModelSpec:
    """The architecture description the model was built from."""
    return model.spec


def dtype_of(model: nn.Module) -> str:
    """The precision of the model's weights, ``"float32"`` or ``"float64"`` (``model.double()`` counts)."""
    return str(next(model.parameters()).dtype).removeprefix("torch.")


def _device(model: nn.Module) -> torch.device:
    """The device of the model's weights, where its inputs must go."""
    return next(model.parameters()).device


def device_of(model: nn.Module) -> str:
    """Where the model's weights are: ``"cpu:0"`` or ``"cuda:0"``... (``model.to("cuda")`` moves them)."""
    device = _device(model)
    return f"{device.type}:{device.index or 0}"


def to_accelerator(model: nn.Module) -> str:
    """Move the model to the GPU when PyTorch sees one (``model.to("cuda")``, as d2l's ``try_gpu``); returns
    ``device_of(model)``. Inputs follow the model: every hook moves them to its device."""
    if torch.cuda.is_available():
        model.to("cuda")
    return device_of(model)


def to_native(x: np.ndarray, dtype: str = "float32") -> torch.Tensor:
    """An NCHW NumPy array as a native tensor of ``dtype`` (NCHW: no transposition)."""
    return torch.from_numpy(np.ascontiguousarray(x, dtype=dtype))


def to_numpy(y: torch.Tensor) -> np.ndarray:
    """A native tensor as a NumPy array in NCHW order."""
    return y.detach().cpu().numpy()


def is_built(model: nn.Module) -> bool:
    """True once every lazy layer knows its input size and has its weights."""
    return not any(nn.parameter.is_lazy(p) for p in model.parameters())


def build(model: nn.Module, input_shape: tuple[int, ...]) -> None:
    """Create the weights of a model's lazy layers for an NCHW input shape (a no-op once built)."""
    if not is_built(model):
        apply(model, to_native(np.zeros(input_shape), dtype_of(model)), training=False)


def apply(model: nn.Module, x: torch.Tensor, training: bool) -> torch.Tensor:
    """Run the model (on the model's device); in training mode BatchNorm uses batch statistics and updates its
    running averages."""
    x = x.to(_device(model))  # a no-op when the input is there already
    was_training = model.training
    model.train(training)
    try:
        if training:
            return model(x)
        with torch.no_grad():
            return model(x)
    finally:
        model.train(was_training)


def part_outputs(model: nn.Module, x: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """(name, output) of each top-level part of a ResNet in inference mode; one entry for a block."""
    if not isinstance(model, ResNet):
        return [(type(model).__name__, apply(model, x, training=False))]
    outputs = []
    for name, part in model.net.named_children():
        x = apply(part, x, training=False)
        outputs.append((name, x))
    return outputs


def trainable_count(model: nn.Module) -> int:
    """Number of trainable parameters (BatchNorm running statistics are buffers, not parameters)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _native_items(model: nn.Module) -> dict[str, torch.Tensor]:
    """Canonical name -> native tensor. The module tree uses the canonical names, under ``net.`` for a ResNet."""
    return {
        name.removeprefix("net."): tensor
        for name, tensor in model.state_dict(keep_vars=True).items()
        if not name.endswith("num_batches_tracked")
    }


def get_arrays(model: nn.Module) -> dict[str, np.ndarray]:
    """Every weight and BatchNorm statistic as canonical name -> array in canonical layout, in the model's
    precision."""
    return {name: tensor.detach().cpu().numpy().copy() for name, tensor in _native_items(model).items()}


def set_arrays(model: nn.Module, arrays: dict[str, np.ndarray]) -> None:
    """Assign canonical arrays (already checked against ``get_arrays``) to the model's tensors, in the model's
    precision."""
    native = _native_items(model)
    with torch.no_grad():
        for name, value in arrays.items():
            native[name].copy_(torch.from_numpy(np.asarray(value)))  # copy_ converts to the tensor's dtype


def _native_grads(model: nn.Module) -> dict[str, np.ndarray]:
    """Canonical name -> gradient of each trainable tensor, in canonical layout."""
    return {
        name.removeprefix("net."): to_numpy(torch.zeros_like(p) if p.grad is None else p.grad)
        for name, p in model.named_parameters()
    }


def vjp(model: nn.Module, x: np.ndarray, output_grad: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Training-mode output for an NCHW batch and the gradients of ``sum(output * output_grad)``.

    Gradients come back by canonical name in canonical layout. BatchNorm updates its running averages as
    in a training step.
    """
    build(model, x.shape)
    model.zero_grad(set_to_none=True)
    dtype = dtype_of(model)
    y = apply(model, to_native(x, dtype), training=True)
    y.backward(to_native(output_grad, dtype))
    return to_numpy(y), _native_grads(model)


def _fast_layout(model: nn.Module) -> Callable[[np.ndarray, str], torch.Tensor]:
    """Ready a built model for repeated steps and return the function that makes a native batch for it.

    On a GPU the weights go channels-last and batches follow (cuDNN's tensor-core convolutions are NHWC;
    NCHW would cost a transposition around every layer); on the CPU nothing changes.
    """
    device = _device(model)
    if device.type != "cuda":
        return lambda x, dtype: to_native(x, dtype)
    # cudnn.benchmark stays off: its kernel search made the chapter's 10-epoch recipe slower on an H200 (70.1
    # against 66.6 s in bfloat16): the first epoch paid more in tuning than the others won back.
    model.to(memory_format=torch.channels_last)
    return lambda x, dtype: to_native(x, dtype).to(device, non_blocking=True, memory_format=torch.channels_last)


def make_train_step(
    model: nn.Module, lr: float, compile: bool = False, mixed_precision: bool = False
) -> Callable[..., float | Callable[[], float]]:
    """A function taking one plain SGD step (the book's optimizer) on the mean softmax cross-entropy of an
    NCHW batch and its integer labels, with BatchNorm in training mode; it returns the loss. With
    ``wait=False`` it returns at once a function that waits for the step and gives its loss, so that a loop
    can prepare the next batch while the framework computes (what ``resnet.training.fit`` does).

    ``compile=True`` runs the model under ``torch.compile`` (PyTorch's optional fast path; eager otherwise).
    ``mixed_precision=True`` computes in bfloat16 under ``torch.autocast``, keeping float32 weights and
    BatchNorm statistics (for a GPU). The step runs where the model is; on a GPU, channels-last.
    """
    dtype = specs.check_mixed_precision(dtype_of(model), mixed_precision, NAME)
    forward = torch.compile(model) if compile else model
    # Eager steps update BatchNorm's averages together after the forward pass; a compiled one fuses them itself.
    statistics = contextlib.nullcontext if compile else _statistics_at_the_end
    optimizer, native_batch = None, None

    def train_step(x: np.ndarray, labels: np.ndarray, wait: bool = True) -> float | Callable[[], float]:
        nonlocal optimizer, native_batch
        if optimizer is None:  # the lazy layers need the first batch's shape
            build(model, x.shape)
            native_batch, optimizer = _fast_layout(model), torch.optim.SGD(model.parameters(), lr=lr)
        device = _device(model)
        model.train()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, torch.bfloat16, enabled=mixed_precision), statistics():
            logits = forward(native_batch(x, dtype))
        loss = F.cross_entropy(logits.to(getattr(torch, dtype)), torch.from_numpy(np.asarray(labels, np.int64)).to(device))
        loss.backward()
        optimizer.step()
        loss = loss.detach()
        return float(loss) if wait else lambda: float(loss)

    return train_step


def make_predict(model: nn.Module, mixed_precision: bool = False) -> Callable[[np.ndarray], np.ndarray]:
    """A function returning the model's inference-mode outputs (NumPy, in the model's precision) for an NCHW
    NumPy batch; ``mixed_precision=True`` computes in bfloat16 as the train step does."""

    dtype = specs.check_mixed_precision(dtype_of(model), mixed_precision, NAME)
    native_batch = None

    def predict(x: np.ndarray) -> np.ndarray:
        nonlocal native_batch
        if native_batch is None:
            build(model, x.shape)
            native_batch = _fast_layout(model)
        device = _device(model)
        with torch.autocast(device.type, torch.bfloat16, enabled=mixed_precision):
            y = apply(model, native_batch(x, dtype), training=False)
        return to_numpy(y.to(getattr(torch, dtype)))

    return predict
