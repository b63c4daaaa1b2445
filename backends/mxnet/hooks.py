"""The contract's hooks (``resnet.contract``) for MXNet Gluon models: conversions, building, running, weights."""

from __future__ import annotations

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon
from mxnet.gluon import nn
from mxnet.util import is_np_array
from resnet.backends.mxnet.layers import as_kind, semantics_of
from resnet.backends.mxnet.models import ResNet

from resnet.contract import MODEL_HOOKS, declared, first_layer_channels, hook
from resnet.layouts import array_to_native, array_to_nchw
from resnet.specs import BatchNormSpec, ConvSpec, DenseSpec
from resnet.walk import is_statistic, native_tensors

__all__ = list(MODEL_HOOKS)

LAYOUT = declared(__name__).layout

# The attribute of each Gluon layer that holds each kind of canonical tensor: BatchNorm's scale and shift are
# gamma and beta (its running statistics are parameters with grad_req='null', torch's buffers).
_TENSOR_ATTRIBUTES = {
    ConvSpec: {"weight": "weight", "bias": "bias"},
    BatchNormSpec: {"weight": "gamma", "bias": "beta", "running_mean": "running_mean", "running_var": "running_var"},
    DenseSpec: {"weight": "weight", "bias": "bias"},
}


@hook
def to_native(x: np.ndarray, dtype: str = "float32") -> mx.nd.NDArray:
    """An ``mxnet.numpy`` array under MXNet's numpy semantics (``npx.set_np()``), a legacy NDArray otherwise;
    the models take either."""
    array = mx.np.array if is_np_array() else mx.nd.array
    return array(array_to_native(np.asarray(x, dtype=dtype), LAYOUT), dtype=dtype)


@hook
def to_numpy(y: mx.nd.NDArray) -> np.ndarray:
    """Either kind of array (``mxnet.numpy`` or legacy)."""
    return array_to_nchw(y.asnumpy(), LAYOUT)


@hook
def dtype_of(model: nn.HybridBlock) -> str:
    """``model.cast(...)`` counts."""
    return np.dtype(next(iter(model.collect_params().values())).dtype).name


def context_of(model: nn.HybridBlock | gluon.Parameter) -> mx.Context:
    """The context of the (first) copy of a model's weights, or of a parameter's; the current one before
    they have any."""
    parameter = model if isinstance(model, gluon.Parameter) else next(iter(model.collect_params().values()))
    return parameter.list_ctx()[0] if parameter._ctx_list else mx.context.current_context()


@hook
def device_of(model: nn.HybridBlock) -> str:
    """Gluon's context: ``mx.cpu(0)`` is ``"cpu:0"``; for a model on several (``parallel.replicate``), the
    first."""
    context = context_of(model)
    return f"{context.device_type}:{context.device_id}"


@hook
def to_accelerator(model: nn.HybridBlock) -> str:
    """Gluon runs where its context says; this project installs MXNet's CPU build (``mxnet``, not
    ``mxnet-cuXXX``) and makes its inputs on ``mx.cpu()``, so nothing moves."""
    return device_of(model)


def _has_data(param: gluon.Parameter) -> bool:
    """True once a parameter holds an array; False while uninitialized or waiting for its input size."""
    try:
        param.data()
    except RuntimeError:  # not initialized, or DeferredInitializationError (an MXNetError, a RuntimeError)
        return False
    return True


@hook
def is_built(model: nn.HybridBlock) -> bool:
    """Built once no parameter waits for its initializer or its input size (deferred initialization)."""
    return all(_has_data(p) for p in model.collect_params().values())


class _Xavier(mx.init.Xavier):
    """MXNet's ``Xavier``, for float64 weights under numpy semantics too.

    There MXNet 1.9.1 draws with ``mx.np.random.uniform(..., out=arr)``, whose operator makes float32 whatever
    ``arr``'s dtype, and fails on a float64 one ("0-th output has invalid shape ... in operator
    _npi_uniform"); so such a weight is drawn in float32, as Xavier computes it, then cast (exactly)."""

    def _init_weight(self, name: str, arr: mx.nd.NDArray) -> None:
        if not isinstance(arr, mx.np.ndarray) or arr.dtype == np.float32:
            return super()._init_weight(name, arr)
        drawn = mx.np.empty(arr.shape, dtype="float32", ctx=arr.ctx)
        super()._init_weight(name, drawn)
        arr[:] = drawn.astype(arr.dtype)
        return None


def initialize(model: nn.HybridBlock) -> None:
    """Give every parameter not yet initialized an initializer, as the book's ``net.initialize(init.Xavier())``.

    Gluon creates the arrays at the first call, once the input size is known (deferred initialization), in
    the model's numpy semantics.
    """
    with semantics_of(model):
        for param in model.collect_params().values():
            try:
                param.list_ctx()  # raises while the parameter has no initializer at all
            except RuntimeError:
                # default_init: a layer's own initializer (zeros for biases, ones for BN scales) takes precedence.
                param.initialize(default_init=_Xavier())


@hook
def build(model: nn.HybridBlock, input_shape: tuple[int, ...]) -> None:
    """Initializers as the book's ``net.initialize``, then one inference-mode pass over zeros gives the lazy
    layers their input sizes and their arrays."""
    if not is_built(model):
        initialize(model)
        apply(model, to_native(np.zeros(input_shape), dtype_of(model)), training=False)


@hook
def input_channels(model: nn.HybridBlock) -> int | None:
    """From the parameter's shape: OIHW kernels, as the canonical layout (Gluon's 0 for a size still to be
    inferred cannot occur: the model is built)."""
    if not is_built(model):
        return None
    return first_layer_channels(model.spec, next(iter(_native_items(model).values())).shape, LAYOUT)


@hook
def apply(model: nn.HybridBlock, x: mx.nd.NDArray, training: bool) -> mx.nd.NDArray:
    """MXNet updates the running averages in the backward pass, not the forward: in training mode this records
    the forward and runs a backward with a zero output gradient, as a training step would. That backward
    writes all-zero parameter gradients (and adds zero where ``grad_req`` is ``'add'``), so nothing leaks
    into a later training step. It runs in the model's numpy semantics, taking either kind of array and
    returning the caller's kind."""
    numpy = is_np_array()
    with semantics_of(model):
        x = as_kind(x, is_np_array())
        if not training:
            with autograd.pause(train_mode=False):  # no recording, BatchNorm with its running averages
                y = model(x)
        else:
            y = _recorded_training_forward(model, x)
            y.backward(_zeros_like(y))
    return as_kind(y, numpy)


def _zeros_like(y: mx.nd.NDArray) -> mx.nd.NDArray:
    """Zeros of ``y``'s shape, dtype and kind (``mxnet.numpy`` or legacy)."""
    return mx.np.zeros_like(y) if isinstance(y, mx.np.ndarray) else mx.nd.zeros_like(y)


def _recorded_training_forward(model: nn.HybridBlock, x: mx.nd.NDArray) -> mx.nd.NDArray:
    """The training-mode output, recorded for a backward that reaches every BatchNorm.

    MXNet's backward skips layers that lead to no gradient, and with them their running-average updates:
    where parameters are frozen (``grad_req='null'``) the statistics would stay, and with all frozen the
    backward fails. A gradient buffer on (a copy of) the input puts every layer on a gradient's path.
    """
    x = x.copy()
    x.attach_grad()
    with autograd.record(train_mode=True):
        return model(x)


@hook
def part_outputs(model: nn.HybridBlock, x: mx.nd.NDArray) -> list[tuple[str, mx.nd.NDArray]]:
    """The parts are Gluon's own HybridSequentials: they run in the model's numpy semantics."""
    if not isinstance(model, ResNet):
        return [(type(model).__name__, apply(model, x, training=False))]
    numpy, outputs = is_np_array(), []
    with semantics_of(model):
        x = as_kind(x, is_np_array())
        for name in model.spec.part_names:
            x = apply(getattr(model.net, name), x, training=False)
            outputs.append((name, as_kind(x, numpy)))
    return outputs


@hook
def trainable_count(model: nn.HybridBlock) -> int:
    """BatchNorm running statistics are parameters with ``grad_req='null'``."""
    return sum(int(np.prod(p.shape)) for p in model.collect_params().values() if p.grad_req != "null")


def _child(parent: nn.HybridBlock, name: str) -> nn.HybridBlock:
    """One step of a canonical path: a named child is an attribute (``b2``, ``conv1``, ``downsample``), a
    stage's block is its index in the HybridSequential (``0``, ``1``...)."""
    return parent[int(name)] if name.isdigit() else getattr(parent, name)


def _native_items(model: nn.HybridBlock) -> dict[str, gluon.Parameter]:
    """Canonical name -> native parameter; a ResNet's parts are under ``net``.

    Found by walking the blocks by their canonical names: Gluon's own parameter names carry automatic prefixes
    (``conv0_weight``...) that depend on how many layers the process has created; they are never parsed.
    """
    root = model.net if isinstance(model, ResNet) else model
    return native_tensors(model.spec, root, _child, _TENSOR_ATTRIBUTES)


@hook
def get_arrays(model: nn.HybridBlock) -> dict[str, np.ndarray]:
    """From the first context of a model on several (``parallel.replicate``): the copies are the same."""
    return {name: param.list_data()[0].asnumpy() for name, param in _native_items(model).items()}


@hook
def set_arrays(model: nn.HybridBlock, arrays: dict[str, np.ndarray]) -> None:
    native = _native_items(model)
    with semantics_of(model):  # arrays of the parameters' kind
        for name, value in arrays.items():
            # set_data copies into the existing arrays, which a hybridized model's cached graph reads.
            native[name].set_data(to_native(value, np.dtype(native[name].dtype).name))


def _native_grads(model: nn.HybridBlock) -> dict[str, np.ndarray]:
    """Canonical name -> gradient of each trainable tensor, in canonical layout (zeros for a frozen one)."""
    return {
        name: np.zeros(p.shape, p.dtype) if p.grad_req == "null" else p.grad().asnumpy()
        for name, p in _native_items(model).items()
        if not is_statistic(name)
    }


@hook
def vjp(model: nn.HybridBlock, x: np.ndarray, output_grad: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    build(model, x.shape)
    dtype = dtype_of(model)
    with semantics_of(model):
        # Not apply(training=True): its own zero-gradient backward would update the running averages twice.
        y = _recorded_training_forward(model, to_native(x, dtype))
        y.backward(to_native(output_grad, dtype))  # grad_req 'write': overwrites any earlier gradient
    return to_numpy(y), _native_grads(model)
