"""Gluon layers from layer descriptions: convolutions (grouped ones in channel chunks where MXNet's own kernel
is slow), BatchNorm and dense layers, inferring their input sizes at the first call like the book's, the ReLU
and named sequential containers the blocks and models use, and what lets them work with and without MXNet's
numpy semantics (``npx.set_np()``)."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from typing import Any

import mxnet as mx
import numpy as np
from mxnet import autograd
from mxnet.gluon import contrib, nn
from mxnet.util import is_np_array, np_array, np_shape

from resnet import specs
from resnet.contract import check_batch_norm_batch
from resnet.specs import BatchNormSpec, BlockSpec, ConvSpec, DenseSpec, LayerSpec

__all__ = [
    "BatchNorm",
    "BothSemantics",
    "ChunkedConv2D",
    "Shortcut",
    "SyncBatchNorm",
    "as_kind",
    "check_names",
    "make_layer",
    "named_layers",
    "named_sequential",
    "numpy_semantics",
    "semantics_of",
    "synchronised_batch_norm",
]

# ----------------------------------------------------------------------------------- MXNet's two semantics
#
# After ``npx.set_np()`` (the chapter's MXNet code starts with it) Gluon's layers take and return
# ``mxnet.numpy`` arrays, which MXNet's legacy operators refuse, and the reverse without it; a Gluon layer
# is also bound to the semantics it was made in (its operator names and placeholder shapes are fixed then).
# So each of our blocks and models computes in the semantics it was made in, and converts at its boundary:
# it takes either kind of array and returns the kind of the caller's semantics. The conversions share memory
# and autograd records them, so the numbers, the gradients and the running averages are those of one kind.


@contextlib.contextmanager
def numpy_semantics(active: bool) -> Iterator[None]:
    """Within: MXNet's numpy semantics on (``active``) or off, shapes and arrays both, as ``npx.set_np()`` and
    ``npx.reset_np()`` set them; the caller's are back on exit."""
    # MXNet refuses numpy arrays without numpy shapes: shapes go on first and off last.
    with contextlib.ExitStack() as stack:
        for scope in (np_shape, np_array) if active else (np_array, np_shape):
            stack.enter_context(scope(active))
        yield


def as_kind(x: Any, numpy: bool) -> Any:
    """An NDArray or Symbol as an ``mxnet.numpy`` one (``numpy``) or a legacy one, sharing its memory (each kind
    converts to itself as itself); anything else unchanged."""
    convert = getattr(x, "as_np_ndarray" if numpy else "as_nd_ndarray", None)
    return x if convert is None else convert()


class BothSemantics(nn.HybridBlock):
    """A HybridBlock that computes in the numpy semantics it was made in (``npx.set_np()`` or not), whatever
    the caller's: called, it takes ``mxnet.numpy`` arrays and legacy NDArrays alike and returns the kind of
    the caller's semantics; ``initialize`` runs in its semantics too (the parameters' arrays are of its kind).
    ``kwargs`` are Gluon's (``prefix``, ``params``)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._numpy = is_np_array()

    def __call__(self, *args: Any) -> Any:
        numpy = self._numpy
        if is_np_array() == numpy:
            return super().__call__(*(as_kind(a, numpy) for a in args))
        with numpy_semantics(numpy):
            out = super().__call__(*(as_kind(a, numpy) for a in args))
        if isinstance(out, (list, tuple)):
            return type(out)(as_kind(o, not numpy) for o in out)
        return as_kind(out, not numpy)

    def initialize(self, *args: Any, **kwargs: Any) -> None:
        """Gluon's ``initialize``, in this block's numpy semantics."""
        with semantics_of(self):
            super().initialize(*args, **kwargs)


def semantics_of(block: nn.Block) -> contextlib.AbstractContextManager:
    """Within: the numpy semantics ``block`` computes in (those it was made in for ours, the caller's for any
    other block)."""
    numpy = getattr(block, "_numpy", None)
    return contextlib.nullcontext() if numpy is None or numpy == is_np_array() else numpy_semantics(numpy)


# Gluon's BatchNorm already averages the *biased* batch variance and infers its channel count at the first call
# (torch needs a subclass for that); it updates the running averages in the *backward* pass, though, which
# ``hooks.apply`` has to allow for. The subclasses below only refuse an empty batch in training mode.


def _check_training_batch(x: Any) -> None:
    """``check_batch_norm_batch`` for an array in training mode (autograd's train mode, as Gluon's BatchNorm reads
    it); a Symbol, inside a hybridized parent, has no shape to check."""
    if autograd.is_training() and isinstance(x, mx.nd.NDArray):  # mxnet.numpy arrays too
        check_batch_norm_batch(x.shape)


class BatchNorm(nn.BatchNorm):
    """Gluon's ``nn.BatchNorm`` (the same parameters, names and numbers) with the empty-batch check of the other
    backends' BatchNorm in training mode, where MXNet stops with an error of its own (oneDNN's "could not
    construct a memory descriptor").

    In float64 the running averages are updated with the exact momentum. MXNet's operator holds its momentum
    in a float32 parameter, so its update weighs the old value by 0.8999999762 and the batch's by 0.1000000238
    (the running statistics off by up to 5e-8 relative after one step, measured). A float64 layer therefore runs
    the operator with momentum 1 (the running averages kept as they are) for its output, and a second operator
    with momentum 0.5, exact in float32, on two values per channel whose mean and biased variance are
    ``m' = (2 * momentum - 1) * old + 2 * (1 - momentum) * batch`` (for the mean; the same for the variance), so
    that its update ``0.5 * old + 0.5 * m'`` is ``momentum * old + (1 - momentum) * batch``. Its output is added
    times zero, which puts it on the backward pass (where MXNet updates the running averages) and changes
    nothing else.
    """

    def forward(self, x: Any, *args: Any) -> Any:
        _check_training_batch(x)
        return super().forward(x, *args)

    def hybrid_forward(self, F: Any, x: Any, gamma: Any, beta: Any, running_mean: Any, running_var: Any) -> Any:
        if np.dtype(self.gamma.dtype) != np.float64:
            return super().hybrid_forward(F, x, gamma, beta, running_mean, running_var)
        numpy = is_np_array()
        op = F.npx.batch_norm if numpy else F.BatchNorm
        kept = dict(self._kwargs, momentum=1.0)  # 1 * old + 0 * batch: the output only
        y = op(x, gamma, beta, running_mean, running_var, name="fwd", **kept)
        # The batch's per-channel mean and biased variance, as the operator computes them (axis 1: NCHW).
        mean = F.np.mean(x, axis=(0, 2, 3)) if numpy else F.mean(x, axis=(0, 2, 3))
        centred = (
            F.np.subtract(x, F.np.reshape(mean, (1, -1, 1, 1)))
            if numpy
            else F.broadcast_sub(x, F.reshape(mean, shape=(1, -1, 1, 1)))
        )
        var = F.np.mean(F.np.square(centred), axis=(0, 2, 3)) if numpy else F.mean(F.square(centred), axis=(0, 2, 3))
        momentum = self._kwargs["momentum"]
        old_weight, batch_weight = 2 * momentum - 1, 2 * (1 - momentum)
        target_mean = old_weight * running_mean + batch_weight * mean
        spread = (old_weight * running_var + batch_weight * var) ** 0.5
        pair = (
            F.np.stack([target_mean - spread, target_mean + spread])
            if numpy
            else F.stack(target_mean - spread, target_mean + spread)
        )
        pair = F.np.reshape(pair, (2, -1, 1, 1)) if numpy else F.reshape(pair, shape=(2, -1, 1, 1))
        halves = dict(self._kwargs, momentum=0.5)
        update = op(pair, gamma, beta, running_mean, running_var, name="update", **halves)
        nothing = F.np.sum(update) * 0 if numpy else F.sum(update) * 0
        return F.np.add(y, nothing) if numpy else F.broadcast_add(y, nothing)


#: While set (``synchronised_batch_norm``), make_layer makes Gluon's SyncBatchNorm over this many devices.
_SYNC_DEVICES: contextvars.ContextVar[int | None] = contextvars.ContextVar("sync_devices", default=None)


@contextlib.contextmanager
def synchronised_batch_norm(num_devices: int) -> Iterator[None]:
    """Within: ``make_layer`` makes BatchNorm layers synchronised over ``num_devices`` contexts of this process
    (``SyncBatchNorm``) instead of Gluon's per-device ``nn.BatchNorm``."""
    token = _SYNC_DEVICES.set(num_devices)
    try:
        yield
    finally:
        _SYNC_DEVICES.reset(token)


class SyncBatchNorm(contrib.nn.SyncBatchNorm):
    """Gluon's synchronised BatchNorm (the statistics of all ``num_devices`` replicas' rows together, the biased
    variance as ``nn.BatchNorm``'s; running averages also updated in the backward pass) in either numpy
    semantics: its operator is a legacy one, so under ``npx.set_np()`` its arrays cross as legacy ones, sharing
    memory. MXNet 1.9.1 computes it in float32 only (``real_t`` throughout its kernel). An empty batch in
    training mode is refused as by ``BatchNorm``."""

    def forward(self, x: Any, *args: Any) -> Any:
        _check_training_batch(x)
        return super().forward(x, *args)

    def hybrid_forward(self, F: Any, x: Any, gamma: Any, beta: Any, running_mean: Any, running_var: Any) -> Any:
        numpy = is_np_array()
        legacy = (as_kind(a, False) for a in (x, gamma, beta, running_mean, running_var))
        return as_kind(F.contrib.SyncBatchNorm(*legacy, name="fwd", **self._kwargs), numpy)


class ChunkedConv2D(nn.Conv2D):
    """A grouped ``nn.Conv2D`` (same parameters: ``weight`` of shape (out, in // groups, kh, kw), ``bias``)
    computed as one dense convolution per chunk of ``chunk`` channels, concatenated: each chunk's kernel is
    block-diagonal, its groups' blocks on the diagonal and zeros elsewhere. Results and gradients agree with
    the grouped convolution to float32 rounding.

    MXNet 1.9.1's hybridized graph runs grouped convolutions with narrow groups far slower than this: a
    ResNeXt block's train step with 64 channels in 8 groups took 125 ms through Gluon's own grouped
    convolution, 35 ms as one block-diagonal convolution and 24 ms in chunks of 16 channels (measured on a
    2-core CPU, batch 4, 48x48). ``make_layer`` uses it where ``_channels_per_chunk`` says so.
    """

    def __init__(self, *args: Any, chunk: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._chunk = chunk

    def hybrid_forward(self, F: Any, x: Any, weight: Any, bias: Any = None) -> Any:
        numpy = is_np_array()  # the two semantics name these operators differently
        options = dict(self._kwargs)
        groups, channels = options.pop("num_group"), options.pop("num_filter")
        chunks = channels // self._chunk
        per_chunk = groups // chunks
        if chunks == 1:
            inputs, weights, biases = [x], [weight], [bias]
        else:  # our grouped convolutions map as many channels in as out, so one split serves both sides
            inputs, weights = _split(F, x, chunks, 1), _split(F, weight, chunks, 0)
            biases = [None] * chunks if bias is None else _split(F, bias, chunks, 0)
        convolution = F.npx.convolution if numpy else F.Convolution
        dtype = np.dtype(self.weight.dtype).name
        outputs = []
        for index, (inputs_, weight_, bias_) in enumerate(zip(inputs, weights, biases)):
            kernel = _block_diagonal(F, weight_, per_chunk, self._chunk, options["kernel"], dtype)
            operands = (inputs_, kernel) if bias_ is None else (inputs_, kernel, bias_)
            outputs.append(convolution(*operands, name=f"chunk{index}", num_group=1, num_filter=self._chunk, **options))
        if chunks == 1:
            return outputs[0]
        return F.np.concatenate(outputs, axis=1) if numpy else F.concat(*outputs, dim=1)


def _split(F: Any, x: Any, parts: int, axis: int) -> list[Any]:
    """``x`` in ``parts`` equal parts along ``axis``, in either semantics."""
    return list(F.np.split(x, parts, axis=axis) if is_np_array() else F.split(x, num_outputs=parts, axis=axis))


def _block_diagonal(F: Any, weight: Any, groups: int, channels: int, kernel: tuple[int, int], dtype: str) -> Any:
    """A grouped OIHW kernel (channels, channels // groups, kh, kw) as the dense (channels, channels, kh, kw)
    kernel it acts as, in either semantics."""
    if groups == 1:
        return weight
    # (out, in/g, kh, kw) -> (g, out/g, 1, in/g, kh, kw), times eye(g) over the two group axes, then merged
    # back to the dense (out, in, kh, kw). The shapes are spelled out: the two semantics' reshape codes differ.
    width = channels // groups
    numpy = is_np_array()
    reshape = (lambda a, shape: F.np.reshape(a, shape)) if numpy else (lambda a, shape: F.reshape(a, shape=shape))
    blocks = reshape(weight, (groups, width, 1, width, *kernel))
    eye = reshape(F.np.eye(groups, dtype=dtype) if numpy else F.eye(groups, dtype=dtype), (groups, 1, groups, 1, 1, 1))
    product = F.np.multiply(blocks, eye) if numpy else F.broadcast_mul(blocks, eye)
    return reshape(product, (channels, channels, *kernel))


def _channels_per_chunk(channels: int, groups: int) -> int | None:
    """How many channels ``ChunkedConv2D`` computes at a time for a grouped convolution, or None for Gluon's
    own grouped convolution, for one with as many ``channels`` in as out."""
    # Measured (hybridized ResNeXt block, fwd + bwd, 2-core CPU, batch 4): with 16 or more channels per group
    # Gluon's kernel is fastest (256 channels in 16 groups at 12x12: 7.6 against 11.6 ms in chunks). With 1-8
    # channels per group, chunks of 16 channels win up to 64 channels (64 in 8, 16 or 32 groups at 48x48:
    # 21-24 ms, against 24-27 ms in chunks of 32, 33-35 ms as one block-diagonal convolution and 27-170 ms
    # through Gluon's kernel), and chunks of 32 from 128 channels up (128 at 24x24: 15 ms, against 29 ms as one
    # convolution and 61 ms in chunks of 16; 256-512 at 6x6-12x12: 11-12 ms, against 14-15 ms in chunks of 64
    # and 25-35 ms in chunks of 16). Chunks of 8 channels crashed the process (a floating-point exception), so
    # widths that do not divide a chunk keep the earlier rule: one block-diagonal convolution for 4-8 channels
    # per group up to 128 channels, Gluon's kernel otherwise.
    width = channels // groups
    if width >= 16:
        return None
    chunk = 16 if channels <= 64 else 32
    if chunk % width == 0 and channels % chunk == 0:
        return chunk
    return channels if 4 <= width <= 8 and channels <= 128 else None


def make_layer(layer: LayerSpec, prefix: str | None = None) -> nn.HybridBlock:
    """The native layer for a layer description, its input size inferred at the first call; ``prefix`` is
    Gluon's (the start of its parameters' names, after the enclosing block's)."""
    if isinstance(layer, ConvSpec):
        square = layer.in_channels in (None, layer.out_channels)  # a ResNeXt block's is; chunks need it
        chunk = _channels_per_chunk(layer.out_channels, layer.groups) if layer.groups > 1 and square else None
        if chunk is not None:
            # Its input size given, not inferred: the dense form hides the weight's shape from Gluon's inference.
            return ChunkedConv2D(
                layer.out_channels,
                layer.kernel,
                layer.stride,
                layer.padding,
                groups=layer.groups,
                use_bias=layer.bias,
                in_channels=layer.out_channels,
                chunk=chunk,
                prefix=prefix,
            )
        return nn.Conv2D(
            layer.out_channels,
            layer.kernel,
            layer.stride,
            layer.padding,
            groups=layer.groups,
            use_bias=layer.bias,
            prefix=prefix,
        )
    if isinstance(layer, BatchNormSpec):
        # Gluon's momentum is the weight of the old running value: the complement of ours.
        options = dict(momentum=1 - specs.BN_MOMENTUM, epsilon=specs.BN_EPSILON, prefix=prefix)
        devices = _SYNC_DEVICES.get()
        return BatchNorm(**options) if devices is None else SyncBatchNorm(num_devices=devices, **options)
    if isinstance(layer, DenseSpec):
        return nn.Dense(layer.out_features, prefix=prefix)
    raise TypeError(f"unknown layer description {layer!r}")


def named_layers(spec: BlockSpec) -> Callable[[LayerSpec], nn.HybridBlock]:
    """``make_layer`` for ``resnet.walk.attach_layers``, each layer's parameters named after its attribute
    (``conv1_weight``, ``bn1_gamma``): it creates them in the order of ``spec.layers()``, and the block checks
    the names afterwards (``check_names``)."""
    names = iter([name for name in spec.layers() if "." not in name])
    return lambda layer: make_layer(layer, prefix=f"{next(names)}_")


def check_names(block: nn.HybridBlock) -> None:
    """Every child of ``block`` is named as the attribute that holds it (its prefix ends in ``<attribute>_``)."""
    for name, child in block._children.items():
        if not child.prefix.endswith(f"{name}_"):
            raise RuntimeError(
                f"{type(block).__name__}.{name}'s parameters are named {child.prefix!r}...: resnet.walk.attach_layers "
                "no longer creates the layers in the order of spec.layers(), which named_layers relies on"
            )


def _relu(F: Any, x: Any) -> Any:
    """ReLU as MXNet's ``Activation`` operator rather than ``F.relu``: the same function and gradient, but
    ``relu`` has no MKL-DNN kernel, so each call converts its input out of MKL-DNN's blocked layout (and the
    next MKL-DNN operator converts it back).
    A ResNeXt block's train step (64 channels, batch 4, 48x48, 2-core CPU) took 22 against 38 ms with 2 groups
    and 17 against 22 ms with 8. Under numpy semantics the same operator is ``npx.activation``."""
    return F.npx.activation(x, act_type="relu") if is_np_array() else F.Activation(x, act_type="relu")


class Shortcut(nn.HybridBlock):
    """A projection shortcut, ``downsample`` in the family's blocks: a 1x1 convolution ``conv`` with the block's
    stride, then BN ``bn`` (none in a pre-activation block)."""

    def __init__(self, conv_spec: ConvSpec, batch_norm: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        with self.name_scope():
            self.conv = make_layer(conv_spec, prefix="conv_")
            self.bn = make_layer(BatchNormSpec(), prefix="bn_") if batch_norm else None

    def hybrid_forward(self, F: Any, X: Any) -> Any:
        X = self.conv(X)
        return X if self.bn is None else self.bn(X)


def named_sequential(prefix: str | None, make_parts: Callable[[], dict[str, nn.HybridBlock]]) -> nn.HybridSequential:
    """A HybridSequential whose children have names, like torch's ``nn.Sequential(OrderedDict(...))``: the parts
    that ``make_parts()`` returns, made in its name scope, so that their parameters' names are under it
    (``<prefix>conv_weight``).

    ``add`` would name them "0", "1", ...; setting an attribute registers the child under that name, in
    order, and leaves it reachable as ``seq.<name>``.
    """
    seq = nn.HybridSequential(prefix=prefix)
    with seq.name_scope():
        parts = make_parts()
    for name, part in parts.items():
        setattr(seq, name, part)
    return seq
