"""The contract's train step and predict function for PyTorch models: eager (or ``torch.compile``d), on the
model's device, optionally in bfloat16."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np
import torch
from resnet.backends.torch.hooks import apply, build, dtype_of, to_native, to_numpy, weights_device
from resnet.backends.torch.layers import statistics_at_the_end
from torch import nn
from torch.nn import functional as F

from resnet.contract import TRAIN_HOOKS, check_mixed_precision, declared, hook, learning_rate_of

__all__ = list(TRAIN_HOOKS)

NAME = declared(__name__).name


def _fast_layout(model: nn.Module) -> Callable[[np.ndarray, str], torch.Tensor]:
    """Ready a built model for repeated steps and return the function that makes a native batch for it.

    On a GPU the weights go channels-last and batches follow (cuDNN's tensor-core convolutions are NHWC;
    NCHW would cost a transposition around every layer); on the CPU nothing changes.
    """
    device = weights_device(model)
    if device.type != "cuda":
        return lambda x, dtype: to_native(x, dtype)
    # cudnn.benchmark stays off: its kernel search made the chapter's 10-epoch recipe slower on an H200 (70.1
    # against 66.6 s in bfloat16): the first epoch paid more in tuning than the others won back.
    model.to(memory_format=torch.channels_last)
    return lambda x, dtype: to_native(x, dtype).to(device, non_blocking=True, memory_format=torch.channels_last)


@hook
def make_train_step(
    model: nn.Module, lr: float | None = None, compile: bool = False, mixed_precision: bool = False
) -> Callable[..., float | Callable[[], float]]:
    """Eager, with ``torch.optim.SGD``; ``compile=True`` runs the model under ``torch.compile``. Mixed
    precision is ``torch.autocast`` to bfloat16. The step runs where the model is; on a GPU, channels-last."""
    dtype = check_mixed_precision(NAME, dtype_of(model), mixed_precision)
    lr = learning_rate_of(model, lr)
    forward = torch.compile(model) if compile else model
    # Eager steps update BatchNorm's averages together after the forward pass; a compiled one fuses them itself.
    statistics = contextlib.nullcontext if compile else statistics_at_the_end
    optimizer, native_batch = None, None

    def train_step(x: np.ndarray, labels: np.ndarray, wait: bool = True) -> float | Callable[[], float]:
        nonlocal optimizer, native_batch
        if optimizer is None:  # the lazy layers need the first batch's shape
            build(model, x.shape)
            native_batch, optimizer = _fast_layout(model), torch.optim.SGD(model.parameters(), lr=lr)
        device = weights_device(model)
        model.train()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, torch.bfloat16, enabled=mixed_precision), statistics():
            logits = forward(native_batch(x, dtype))
        targets = torch.from_numpy(np.asarray(labels, np.int64)).to(device)
        loss = F.cross_entropy(logits.to(getattr(torch, dtype)), targets)
        loss.backward()
        optimizer.step()
        loss = loss.detach()
        return float(loss) if wait else lambda: float(loss)

    return train_step


@hook
def make_predict(model: nn.Module, mixed_precision: bool = False) -> Callable[[np.ndarray], np.ndarray]:
    """Eager under ``torch.no_grad``; mixed precision as in the train step."""

    dtype = check_mixed_precision(NAME, dtype_of(model), mixed_precision)
    native_batch = None

    def predict(x: np.ndarray) -> np.ndarray:
        nonlocal native_batch
        if native_batch is None:
            build(model, x.shape)
            native_batch = _fast_layout(model)
        device = weights_device(model)
        with torch.autocast(device.type, torch.bfloat16, enabled=mixed_precision):
            y = apply(model, native_batch(x, dtype), training=False)
        return to_numpy(y.to(getattr(torch, dtype)))

    return predict
