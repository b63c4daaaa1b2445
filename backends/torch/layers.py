"""PyTorch layers from layer descriptions: convolutions, BatchNorm (with the canonical running variance) and
dense layers, inferring their input sizes at the first call like the book's ``nn.Lazy*`` layers; and the
synchronised BatchNorm of data-parallel training (``SyncBatchNorm2d``, ``synchronise_batch_norm``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol  # collectives with gradients (torch's recommended ones)
from torch import nn
from torch.nn.modules._functions import SyncBatchNorm as _SyncBatchNormFunction  # what nn.SyncBatchNorm runs
from torch.nn.modules.batchnorm import _BatchNorm  # what BatchNorm2d and LazyBatchNorm2d share

from resnet import specs
from resnet.contract import check_batch_norm_batch
from resnet.specs import BatchNormSpec, ConvSpec, DenseSpec, LayerSpec

__all__ = [
    "BatchNorm2d",
    "LazyBatchNorm2d",
    "Shortcut",
    "SyncBatchNorm2d",
    "make_layer",
    "statistics_at_the_end",
    "synchronise_batch_norm",
]


def _batch_norm(layer: _BatchNorm, x: torch.Tensor) -> torch.Tensor:
    """The forward pass of ``BatchNorm2d`` below, for it and for ``LazyBatchNorm2d``'s first call."""
    if not layer.training:
        return nn.BatchNorm2d.forward(layer, x)
    check_batch_norm_batch(x.shape)  # the same message in every backend (PyTorch's own: "at least one element")
    # native_batch_norm also returns the batch mean and 1/sqrt(var + eps): the biased variance for free. It
    # normalizes one example too (PyTorch's F.batch_norm refuses a single value per channel; here that gives
    # the shift, as in Keras, Flax and MXNet).
    y, mean, invstd = torch.ops.aten.native_batch_norm(x, layer.weight, layer.bias, None, None, True, 0.0, layer.eps)
    _record_statistics(layer, mean, invstd)
    return y


def _record_statistics(layer: _BatchNorm, mean: torch.Tensor, invstd: torch.Tensor) -> None:
    """Move ``layer``'s running averages towards a batch's statistics, at the end of the running train step."""
    if _PENDING_STATISTICS is not None:  # inside a train step: updated with every other layer's at its end
        _PENDING_STATISTICS.append((layer, mean, invstd))
    else:
        _update_statistics([(layer, mean, invstd)])


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


class SyncBatchNorm2d(BatchNorm2d):
    """``BatchNorm2d`` normalizing, in training, with the statistics of the global batch: the rows of every
    process in ``torch.distributed``'s default group together (``--sync-bn``).

    On GPUs the statistics and their gradients are torch's SyncBatchNorm's (the autograd function that
    ``nn.SyncBatchNorm`` runs: one all-gather forward, one all-reduce backward); torch has no CPU kernels for
    it and DistributedDataParallel refuses ``nn.SyncBatchNorm`` on a CPU, so on a CPU the same sums go through
    all-reduces that carry gradients (``torch.distributed._functional_collectives``). Either way the running
    variance averages the *biased* variance of the global batch, as ``BatchNorm2d``'s does (``nn.SyncBatchNorm``
    would average the unbiased one). In inference, or outside a group of several processes, ``BatchNorm2d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return _batch_norm(self, x)
        check_batch_norm_batch(x.shape)
        synchronised = _torch_sync_batch_norm if x.is_cuda and torch.is_grad_enabled() else _summed_batch_norm
        y, mean, invstd = synchronised(self, x)
        _record_statistics(self, mean.detach(), invstd.detach())
        return y

    @classmethod
    def like(cls, layer: _BatchNorm) -> SyncBatchNorm2d:
        """A synchronised copy of ``layer``: its settings, weights, running averages and mode."""
        weight = layer.weight
        synchronised = cls(layer.num_features, layer.eps, layer.momentum, device=weight.device, dtype=weight.dtype)
        synchronised.load_state_dict(layer.state_dict())
        return synchronised.train(layer.training)


def _torch_sync_batch_norm(layer: _BatchNorm, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """torch's SyncBatchNorm (CUDA only), asked not to touch the running averages: the output, and the global
    mean and 1/sqrt(biased variance + eps) it normalized with (what it keeps for its backward pass)."""
    y = _SyncBatchNormFunction.apply(
        x, layer.weight, layer.bias, None, None, layer.eps, 0.0, dist.group.WORLD, dist.get_world_size()
    )
    saved = y.grad_fn.saved_tensors  # (input, weight, mean, invstd, counts) in torch 2.x
    if len(saved) != 5 or saved[2].shape != (x.shape[1],) or saved[3].shape != (x.shape[1],):
        raise RuntimeError(
            "this torch's SyncBatchNorm keeps other tensors than torch 2.x's (input, weight, mean, "
            "invstd, counts): resnet.backends.torch.layers._torch_sync_batch_norm needs updating"
        )
    return y, saved[2], saved[3]


def _summed_batch_norm(layer: _BatchNorm, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """BatchNorm over every process's rows on any device: the channel sums all-reduced (gradients too), the
    mean first, then the squared deviations from it (two passes, as exact as one device's BatchNorm)."""
    group, per_channel = dist.group.WORLD, (1, -1, 1, 1)
    dtype = torch.promote_types(x.dtype, layer.weight.dtype)  # bfloat16 activations: statistics in float32
    z = x.to(dtype)
    counted = torch.cat([z.sum((0, 2, 3)), z.new_full((1,), z.numel() // z.shape[1])])
    sums = funcol.all_reduce(counted, "sum", group)
    count = sums[-1]
    mean = sums[:-1] / count
    centred = z - mean.view(per_channel)
    variance = funcol.all_reduce(centred.square().sum((0, 2, 3)), "sum", group) / count
    invstd = torch.rsqrt(variance + layer.eps)
    y = centred * (invstd * layer.weight).view(per_channel) + layer.bias.view(per_channel)
    return y.to(x.dtype), mean, invstd


def synchronise_batch_norm(module: nn.Module) -> nn.Module:
    """``module`` with each of its BatchNorm layers replaced, in place, by a ``SyncBatchNorm2d`` with the same
    weights (``nn.SyncBatchNorm.convert_sync_batchnorm``'s work, for this package's BatchNorm)."""
    for name, child in module.named_children():
        if isinstance(child, _BatchNorm) and not isinstance(child, SyncBatchNorm2d):
            setattr(module, name, SyncBatchNorm2d.like(child))
        else:
            synchronise_batch_norm(child)
    return module


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
