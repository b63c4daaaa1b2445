"""The contract's hooks (``resnet.contract``) for PyTorch models: conversions, building, running, weights."""

from __future__ import annotations

import numpy as np
import torch
from resnet.backends.torch.models import ResNet
from torch import nn

from resnet.contract import MODEL_HOOKS, declared, first_layer_channels, hook
from resnet.layouts import array_to_native, array_to_nchw
from resnet.specs import BatchNormSpec, ConvSpec, DenseSpec
from resnet.walk import is_statistic, native_tensors

__all__ = list(MODEL_HOOKS)

LAYOUT = declared(__name__).layout

# The attribute of each PyTorch layer that holds each kind of canonical tensor: PyTorch's names are the canonical
# ones (running statistics are buffers).
_TENSOR_ATTRIBUTES = {
    ConvSpec: {"weight": "weight", "bias": "bias"},
    BatchNormSpec: {"weight": "weight", "bias": "bias", "running_mean": "running_mean", "running_var": "running_var"},
    DenseSpec: {"weight": "weight", "bias": "bias"},
}


@hook
def to_native(x: np.ndarray, dtype: str = "float32") -> torch.Tensor:
    return torch.from_numpy(array_to_native(np.asarray(x, dtype=dtype), LAYOUT))


@hook
def to_numpy(y: torch.Tensor) -> np.ndarray:
    return array_to_nchw(y.detach().cpu().numpy(), LAYOUT)


@hook
def dtype_of(model: nn.Module) -> str:
    """``model.double()`` counts."""
    return str(next(model.parameters()).dtype).removeprefix("torch.")


def weights_device(model: nn.Module) -> torch.device:
    """The device of the model's weights, where its inputs must go."""
    return next(model.parameters()).device


@hook
def device_of(model: nn.Module) -> str:
    """``model.to("cuda")`` moves the weights."""
    device = weights_device(model)
    return f"{device.type}:{device.index or 0}"


@hook
def to_accelerator(model: nn.Module) -> str:
    """``model.to("cuda")`` when PyTorch sees a GPU, as d2l's ``try_gpu``; every hook moves its inputs to the
    model's device."""
    if torch.cuda.is_available():
        model.to("cuda")
    return device_of(model)


@hook
def is_built(model: nn.Module) -> bool:
    """Built once no parameter is lazy."""
    return not any(nn.parameter.is_lazy(p) for p in model.parameters())


@hook
def build(model: nn.Module, input_shape: tuple[int, ...]) -> None:
    """One inference-mode pass over zeros gives the lazy layers their input sizes."""
    if not is_built(model):
        apply(model, to_native(np.zeros(input_shape), dtype_of(model)), training=False)


@hook
def input_channels(model: nn.Module) -> int | None:
    """From the parameter's shape: OIHW kernels, as the canonical layout."""
    if not is_built(model):
        return None
    return first_layer_channels(model.spec, next(iter(_native_items(model).values())).shape, LAYOUT)


@hook
def apply(model: nn.Module, x: torch.Tensor, training: bool) -> torch.Tensor:
    """The input moves to the model's device; inference runs under ``torch.no_grad``."""
    x = x.to(weights_device(model))  # a no-op when the input is there already
    was_training = model.training
    model.train(training)
    try:
        if training:
            return model(x)
        with torch.no_grad():
            return model(x)
    finally:
        model.train(was_training)


@hook
def part_outputs(model: nn.Module, x: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    if not isinstance(model, ResNet):
        return [(type(model).__name__, apply(model, x, training=False))]
    outputs = []
    for name, part in model.net.named_children():
        x = apply(part, x, training=False)
        outputs.append((name, x))
    return outputs


@hook
def trainable_count(model: nn.Module) -> int:
    """BatchNorm running statistics are buffers, not parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _native_items(model: nn.Module) -> dict[str, torch.Tensor]:
    """Canonical name -> native parameter or buffer; a ResNet's parts are under ``net``."""
    return native_tensors(model.spec, model.net if isinstance(model, ResNet) else model, getattr, _TENSOR_ATTRIBUTES)


@hook
def get_arrays(model: nn.Module) -> dict[str, np.ndarray]:
    return {name: tensor.detach().cpu().numpy().copy() for name, tensor in _native_items(model).items()}


@hook
def set_arrays(model: nn.Module, arrays: dict[str, np.ndarray]) -> None:
    native = _native_items(model)
    with torch.no_grad():
        for name, value in arrays.items():
            native[name].copy_(torch.from_numpy(np.asarray(value)))  # copy_ converts to the tensor's dtype


@hook
def vjp(model: nn.Module, x: np.ndarray, output_grad: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    build(model, x.shape)
    model.zero_grad(set_to_none=True)
    dtype = dtype_of(model)
    y = apply(model, to_native(x, dtype), training=True)
    y.backward(to_native(output_grad, dtype))
    grads = {
        name: torch.zeros_like(p) if p.grad is None else p.grad
        for name, p in _native_items(model).items()
        if not is_statistic(name)
    }
    return to_numpy(y), {name: to_numpy(grad) for name, grad in grads.items()}
