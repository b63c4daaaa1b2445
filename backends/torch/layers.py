"""PyTorch layers from layer descriptions: convolutions, BatchNorm (with the canonical running variance) and
dense layers, inferring their input sizes at the first call like the book's ``nn.Lazy*`` layers."""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm  # what BatchNorm2d and LazyBatchNorm2d share

from resnet import specs
from resnet.specs import BatchNormSpec, ConvSpec, DenseSpec, LayerSpec

__all__ = ["BatchNorm2d", "LazyBatchNorm2d", "Shortcut", "make_layer", "statistics_at_the_end"]


def _batch_norm(layer: _BatchNorm, x: torch.Tensor) -> torch.Tensor:
    """The forward pass of ``BatchNorm2d`` below, for it and for ``LazyBatchNorm2d``'s first call."""
    if not layer.training:
        return nn.BatchNorm2d.forward(layer, x)
    # native_batch_norm also returns the batch mean and 1/sqrt(var + eps): the biased variance for free. It
    # normalizes one example too (PyTorch's F.batch_norm refuses a single value per channel; here that gives
    # the shift, as in Keras, Flax and MXNet).
    y, mean, invstd = torch.ops.aten.native_batch_norm(x, layer.weight, layer.bias, None, None, True, 0.0, layer.eps)
    if _PENDING_STATISTICS is not None:  # inside a train step: updated with every other layer's at its end
        _PENDING_STATISTICS.append((layer, mean, invstd))
    else:
        _update_statistics([(layer, mean, invstd)])
    return y


class BatchNorm2d(nn.BatchNorm2d):
    """BatchNorm whose running variance averages the *biased* batch variance, as Keras, Flax and MXNet do.

    PyTorch's own BatchNorm averages the unbiased variance; without this the running statistics, and so
    every evaluation after training, would differ between backends.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _batch_norm(self, x)


# (layer, batch mean, batch 1/sqrt(var + eps)) of each BatchNorm in the running train step's forward pass.
_PENDING_STATISTICS: list[tuple[_BatchNorm, torch.Tensor, torch.Tensor]] | None = None


def _update_statistics(pending: Sequence[tuple[_BatchNorm, torch.Tensor, torch.Tensor]]) -> None:
    """Move the layers' running averages towards their batch statistics, all layers in a few fused (foreach)
    operations: per layer, three small kernels each would make a GPU step wait on kernel launches."""
    alike: dict[tuple[float, float], list[tuple[_BatchNorm, torch.Tensor, torch.Tensor]]] = {}
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
def statistics_at_the_end() -> Iterator[None]:
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The first call runs this method, not BatchNorm2d's: nn.Module looks the forward up before the lazy
        # pre-hook creates the weights and swaps the class. Without it that call would be PyTorch's own
        # BatchNorm (the unbiased variance in the running average, and an error for a batch of one).
        return _batch_norm(self, x)


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
