"""Flax layers from layer descriptions: convolutions (with faster ways to compute some of them on a CPU),
BatchNorm (with the canonical epsilon, momentum and variance) and dense layers, inferring their input sizes at
the first call like the book's."""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from resnet import specs
from resnet.contract import check_batch_norm_batch
from resnet.specs import BatchNormSpec, ConvSpec, DenseSpec, LayerSpec

__all__ = [
    "CPU_COMPILER_OPTIONS",
    "BatchNorm",
    "CpuConvGeneralDilated",
    "Shortcut",
    "block_diagonal_kernel",
    "cpu_jit",
    "make_layer",
    "max_pool",
    "synchronised_batch_norm",
]

_BATCH_NORM_AXIS: contextvars.ContextVar[str | None] = contextvars.ContextVar("batch_norm_axis", default=None)


@contextlib.contextmanager
def synchronised_batch_norm(axis_name: str | None) -> Iterator[None]:
    """Inside, the BatchNorm layers that a model sets up (Flax sets its layers up in each ``apply``) are Flax's
    synchronised ``BatchNorm(axis_name=axis_name)``: batch statistics averaged over the devices along that axis
    of a ``shard_map``'s mesh, the global batch's (``resnet.backends.jax.parallel``). None, and outside: each
    device's own batch. The model's fields and weights stay the same: only how a training step runs changes."""
    token = _BATCH_NORM_AXIS.set(axis_name)
    try:
        yield
    finally:
        _BATCH_NORM_AXIS.reset(token)


class BatchNorm(nn.BatchNorm):
    """Flax's ``BatchNorm`` (the same fields, variables and numbers) that refuses an empty batch in training mode
    with a ValueError: Flax would normalize it with NaN statistics and write them into ``batch_stats``. Under
    ``jax.jit`` the batch size is static, so the check runs once, while tracing."""

    def __call__(
        self, x: jax.Array, use_running_average: bool | None = None, *, mask: jax.Array | None = None
    ) -> jax.Array:
        if not nn.merge_param("use_running_average", self.use_running_average, use_running_average):
            check_batch_norm_batch(x.shape)
        return super().__call__(x, use_running_average, mask=mask)


#: XLA's compiler options for this backend's jitted steps on a CPU. jaxlib 0.10 hands a jitted function's
#: convolutions to YNNPACK (``__ynn_fusion`` in the compiled HLO), together with the elementwise operations, dots
#: and reductions around them; an empty list of YNN fusion types leaves them to XLA's own CPU kernels (Eigen's
#: convolution, as TensorFlow's). Measured on the 2-core AMD EPYC (jitted, batch 128, forward, 2 threads), ms
#: with YNNPACK / without, ResNet-18's convolutions at 96x96: the 7x7/2 stem 116 / 105, 3x3 64 -> 64 at 24x24
#: 101 / 57, 128 -> 128 at 12x12 45 / 54, 256 at 6x6 47 / 43, 512 at 3x3 68 / 50; all nine shapes weighted by
#: their count 1118 / 849 ms, where TensorFlow's ``tf.nn.conv2d`` took 795. ResNet-18 through ``resnet bench
#: --only resnet18_train,resnet18_infer`` with the flag set for both sides: training 31.4 -> 50.1 images/s,
#: inference 104 -> 172.
CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


@functools.cache
def _cpu_compiler_options() -> dict[str, str] | None:
    """``CPU_COMPILER_OPTIONS`` on a CPU where this jaxlib accepts them (a tiny function compiled with them
    once), else None: XLA's defaults."""
    if jax.default_backend() != "cpu":
        return None
    try:
        jax.jit(lambda x: x + 1, compiler_options=CPU_COMPILER_OPTIONS).lower(jnp.zeros(())).compile()
    except (jax.errors.JaxRuntimeError, ValueError):  # a jaxlib without the option, or with other values
        return None
    return CPU_COMPILER_OPTIONS


class cpu_jit:  # noqa: N801 - used as a decorator, like jax.jit
    """``jax.jit(fun, **jit_options)`` compiled, on a CPU, with ``CPU_COMPILER_OPTIONS`` (the default device
    is looked up at the first call, not at import). Attributes are the jitted function's (``lower``,
    ``_cache_size``)."""

    def __init__(self, fun: Callable[..., Any], **jit_options: Any) -> None:
        self._fun, self._jit_options = fun, jit_options
        functools.update_wrapper(self, fun)

    @functools.cached_property
    def _jitted(self) -> Callable[..., Any]:
        return jax.jit(self._fun, compiler_options=_cpu_compiler_options(), **self._jit_options)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._jitted(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._jitted, name)


class CpuConvGeneralDilated:
    """``lax.conv_general_dilated`` for ``nn.Conv(..., conv_general_dilated_cls=CpuConvGeneralDilated)``: the
    same convolution, computed the way XLA runs fastest on a CPU.

    The layer stays an ``nn.Conv`` (parameters ``kernel``, HWIO with I = in_channels // groups, and
    ``bias``); only how the convolution is computed changes, on CPU alone (other devices run XLA's own
    kernels, which are good there). The results agree with the plain convolution to float32 rounding,
    gradients included. Three cases change:

    * Grouped (``feature_group_count > 1``): XLA's CPU kernel is slow, its backward pass above all: a training
      step through it is 30-100x slower than through separate convolutions on chunks of the channels,
      concatenated, each chunk one group or a few groups as one dense convolution with a block-diagonal
      kernel.
    * 1x1 without padding: a matrix product over the channels (after taking every ``stride``-th pixel), about
      1.3x faster, backward pass included (64 channels at 4x48x48: 2.9 against 3.8 ms on a 2-core CPU).
    * Other dense convolutions with a large output (``_CHUNKED_MIN_PIXELS`` pixels an image or more): the
      forward pass is XLA's, the kernel gradient a sum of per-chunk kernel gradients over chunks of
      ``_BATCH_CHUNK`` images (``_chunked_kernel_gradient``).
    """

    def __call__(
        self,
        lhs: jax.Array,
        rhs: jax.Array,
        window_strides: Sequence[int],
        padding: Any,
        lhs_dilation: Sequence[int] | None = None,
        rhs_dilation: Sequence[int] | None = None,
        dimension_numbers: Any = None,
        feature_group_count: int = 1,
        precision: Any = None,
        **kwargs: Any,
    ) -> jax.Array:
        conv = functools.partial(
            lax.conv_general_dilated,
            window_strides=window_strides,
            padding=padding,
            lhs_dilation=lhs_dilation,
            rhs_dilation=rhs_dilation,
            dimension_numbers=dimension_numbers,
            precision=precision,
            **kwargs,
        )
        groups = feature_group_count
        if jax.default_backend() != "cpu":
            return conv(lhs, rhs, feature_group_count=groups)
        # nn.Conv passes channels-last arrays: input (N, H, W, C), kernel (kh, kw, C // groups, out).
        if groups > 1:
            return _grouped_on_cpu(conv, lhs, rhs, groups)
        dilated = any(d != 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
        if rhs.shape[:2] == (1, 1) and all(tuple(p) == (0, 0) for p in padding) and not dilated and not kwargs:
            sh, sw = window_strides
            return jnp.einsum("nhwc,co->nhwo", lhs[:, ::sh, ::sw, :], rhs[0, 0], precision=precision)
        if lhs.shape[0] > _BATCH_CHUNK and _output_pixels(lhs, rhs, window_strides, padding) >= _CHUNKED_MIN_PIXELS:
            return _chunked_kernel_gradient(conv, lhs, rhs)
        return conv(lhs, rhs)


# XLA's CPU kernel for a convolution's kernel gradient slows down with the batch when the images are large:
# per 128 images, jitted, on a 2-core CPU (load about 5), 3x3 64->64 at 24x24 takes 59 ms in chunks of 8
# images against 326 ms at once, 3x3 128->128 at 12x12 56 against 226, the 7x7/2 stem at 96x96 80 against
# 330; its forward pass and input gradient change far less (3x3 64->64: 60 and 61 ms at once, 42 and 44 in
# chunks of 8), and the stem's forward pass is 1.8x slower in chunks. Below 12x12 output pixels chunks lose
# (3x3 256->256 at 6x6: 108 ms at once, 118 in chunks of 8; 512->512 at 3x3: 176 against 392). Chunks of 4
# and 16 were no better than 8; the input gradient in chunks too gained nothing measurable (176 against 176
# ms for 3x3 64->64, fwd + bwd). ResNet-18's train step at batch 128, 1x96x96: 34-35 against 27-28 images/s
# (load about 3), inference unchanged; the first compilation takes about 4 s longer.
_BATCH_CHUNK = 8
_CHUNKED_MIN_PIXELS = 12 * 12


def _output_pixels(lhs: jax.Array, rhs: jax.Array, strides: Sequence[int], padding: Any) -> int:
    """Output pixels an image of a channels-last convolution with explicit ``padding`` (pairs), or 0 when the
    padding is a string ('SAME'/'VALID': left to XLA)."""
    if isinstance(padding, str):
        return 0
    pixels = 1
    for size, kernel, stride, (low, high) in zip(lhs.shape[1:-1], rhs.shape[:-2], strides, padding):
        pixels *= (size + low + high - kernel) // stride + 1
    return pixels


def _chunked_kernel_gradient(conv: Callable[..., jax.Array], lhs: jax.Array, rhs: jax.Array) -> jax.Array:
    """``conv(lhs, rhs)`` whose backward pass computes the kernel gradient as a sum over chunks of
    ``_BATCH_CHUNK`` images (accumulated in at least float32) and the input gradient as XLA's, at once."""

    @jax.custom_vjp
    def convolve(x: jax.Array, kernel: jax.Array) -> jax.Array:
        return conv(x, kernel)

    def forward(x: jax.Array, kernel: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        return conv(x, kernel), (x, kernel)

    def backward(saved: tuple[jax.Array, jax.Array], grad: jax.Array) -> tuple[jax.Array, jax.Array]:
        x, kernel = saved
        (input_grad,) = jax.vjp(lambda x: conv(x, kernel), x)[1](grad)
        total = jnp.promote_types(kernel.dtype, jnp.float32)  # bfloat16 chunks summed in float32
        kernel_grad = sum(
            _kernel_gradient(conv, x[i : i + _BATCH_CHUNK], kernel, grad[i : i + _BATCH_CHUNK]).astype(total)
            for i in range(0, x.shape[0], _BATCH_CHUNK)
        )
        return input_grad, kernel_grad.astype(kernel.dtype)

    convolve.defvjp(forward, backward)
    return convolve(lhs, rhs)


def _kernel_gradient(conv: Callable[..., jax.Array], x: jax.Array, kernel: jax.Array, grad: jax.Array) -> jax.Array:
    """XLA's kernel gradient of ``conv(x, kernel)`` for the output gradient ``grad``."""
    return jax.vjp(lambda k: conv(x, k), kernel)[1](grad)[0]


def _grouped_on_cpu(conv: Callable[..., jax.Array], lhs: jax.Array, rhs: jax.Array, groups: int) -> jax.Array:
    """A grouped convolution as one convolution per chunk of ``_groups_per_chunk`` groups, concatenated: a
    plain convolution for a chunk of one group, else a dense one with a block-diagonal kernel. ``conv`` is
    ``lax.conv_general_dilated`` with every argument but the operands and the group count bound."""
    per_chunk = _groups_per_chunk(lhs.shape[-1], groups)
    chunks = groups // per_chunk
    pairs = zip(jnp.split(lhs, chunks, axis=-1), jnp.split(rhs, chunks, axis=-1))
    outputs = [conv(x, block_diagonal_kernel(kernel, per_chunk) if per_chunk > 1 else kernel) for x, kernel in pairs]
    return outputs[0] if chunks == 1 else jnp.concatenate(outputs, axis=-1)


def _groups_per_chunk(in_channels: int, groups: int) -> int:
    # A block-diagonal chunk of d groups does d times the multiply-adds of its groups, but in one call;
    # separate convolutions pay a fixed cost each. Measured on a 2-core CPU (fwd + bwd, jitted, 64-512
    # channels, 6x6-48x48, batch 4-32): chunks of 16 channels are fastest (8-channel groups in pairs:
    # 1.03-1.7x faster than one convolution per group, 1.1-1.7x faster than chunks of 32; groups of 2 or 4
    # channels, 8 or 4 to a chunk, matched or beat a sum of shifted products without any convolution, by up
    # to 1.6x); groups of 16 or more channels alone; up to 32 channels in all, one dense convolution.
    if in_channels <= 32:
        return groups
    width = in_channels // groups
    return max(d for d in range(1, groups + 1) if groups % d == 0 and d * width <= max(16, width))


def block_diagonal_kernel(kernel: jax.Array, groups: int) -> jax.Array:
    """A grouped HWIO kernel (kh, kw, C // groups, out) as the dense (kh, kw, C, out) kernel it acts as:
    group g's block on the diagonal, zeros elsewhere."""
    kh, kw, group_in, out = kernel.shape
    blocks = kernel.reshape(kh, kw, group_in, groups, out // groups)
    # dense[h, w, G, i, g, o] = blocks[h, w, i, g, o] if G == g else 0
    dense = jnp.einsum("hwigo,Gg->hwGigo", blocks, jnp.eye(groups, dtype=kernel.dtype))
    return dense.reshape(kh, kw, groups * group_in, out)


def max_pool(x: jax.Array, kernel: int, stride: int, padding: int) -> jax.Array:
    """``nn.max_pool`` over square ``kernel`` windows of a channels-last ``x``, ``padding`` cells of -inf on each
    side: the same values and gradients (the whole gradient to a window's first maximum, in row-major order, as
    XLA and PyTorch give it), with a faster backward pass on a CPU (``_first_maximum_pool``)."""
    pads = ((padding, padding), (padding, padding))
    xla = functools.partial(nn.max_pool, window_shape=(kernel, kernel), strides=(stride, stride), padding=pads)
    if jax.default_backend() != "cpu":
        return xla(x)
    return _first_maximum_pool(xla, x, kernel, stride, padding)


# XLA's CPU gradient of max pooling (select_and_scatter) is slow: the stem's 3x3/2 pooling of (128, 48, 48, 64)
# takes 322-330 ms forward and backward, jitted, on a quiet 2-core CPU, against 73-79 ms for the custom VJP below
# (the window's strided slices compared in order, the index of each first maximum kept as int8, the gradient
# placed back with one interior-padded copy per window position); its forward pass, 30-34 against 16-24 ms, is
# paid in training only: inference runs XLA's reduce_window.
def _first_maximum_pool(
    xla: Callable[[jax.Array], jax.Array], x: jax.Array, kernel: int, stride: int, padding: int
) -> jax.Array:
    """``xla(x)``, the max pooling that ``max_pool`` describes, with a custom VJP (``kernel`` ** 2 < 128 window
    positions, numbered in an int8)."""
    n, h, w, c = x.shape
    out_h, out_w = ((size + 2 * padding - kernel) // stride + 1 for size in (h, w))
    # the extent of each window position's strided slice of the padded input
    span_h, span_w = stride * (out_h - 1) + 1, stride * (out_w - 1) + 1

    def positions(x: jax.Array) -> Iterator[jax.Array]:
        edge = (padding, padding, 0)
        padded = lax.pad(x, jnp.array(-jnp.inf, x.dtype), ((0, 0, 0), edge, edge, (0, 0, 0)))
        for dh in range(kernel):
            for dw in range(kernel):
                yield lax.slice(padded, (0, dh, dw, 0), (n, dh + span_h, dw + span_w, c), (1, stride, stride, 1))

    @jax.custom_vjp
    def pool(x: jax.Array) -> jax.Array:
        return xla(x)

    def forward(x: jax.Array) -> tuple[jax.Array, jax.Array]:
        windows = positions(x)
        best = next(windows)
        first = jnp.zeros(best.shape, jnp.int8)
        for i, value in enumerate(windows, start=1):
            later = value > best  # strictly: a tie keeps the earlier position
            best, first = jnp.where(later, value, best), jnp.where(later, jnp.int8(i), first)
        return best, first

    def backward(first: jax.Array, grad: jax.Array) -> tuple[jax.Array]:
        zero = jnp.array(0, grad.dtype)
        padded_h, padded_w = h + 2 * padding, w + 2 * padding
        total = None
        for i in range(kernel * kernel):
            dh, dw = divmod(i, kernel)
            # the gradient of the windows whose first maximum sits at position i, back at those input cells
            rows, columns = (dh, padded_h - dh - span_h, stride - 1), (dw, padded_w - dw - span_w, stride - 1)
            placed = lax.pad(jnp.where(first == i, grad, zero), zero, ((0, 0, 0), rows, columns, (0, 0, 0)))
            total = placed if total is None else total + placed
        return (total[:, padding : padding + h, padding : padding + w, :],)

    pool.defvjp(forward, backward)
    return pool(x)


def make_layer(layer: LayerSpec, training: bool = True) -> nn.Module:
    """The native layer for a layer description, its input size inferred at the first call; ``training``: the
    book's field, BatchNorm normalizing with the batch statistics (else the running averages)."""
    if isinstance(layer, ConvSpec):
        p = layer.padding  # explicit and symmetric: 'SAME' pads stride-2 layers asymmetrically
        return nn.Conv(
            layer.out_channels,
            (layer.kernel, layer.kernel),
            layer.stride,
            ((p, p), (p, p)),
            feature_group_count=layer.groups,
            use_bias=layer.bias,
            # XLA's own convolution unless a faster way to compute it on a CPU is known for this shape.
            conv_general_dilated_cls=CpuConvGeneralDilated,
        )
    if isinstance(layer, BatchNormSpec):
        # Flax averages the biased batch variance, as specs asks; its momentum weighs the old value.
        # use_fast_variance=False: E[(x - mean)^2], not E[x^2] - mean^2, which loses digits in float32.
        return BatchNorm(
            use_running_average=not training,
            momentum=1 - specs.BN_MOMENTUM,
            epsilon=specs.BN_EPSILON,
            use_fast_variance=False,
            axis_name=_BATCH_NORM_AXIS.get(),  # None but inside synchronised_batch_norm
        )
    if isinstance(layer, DenseSpec):
        return nn.Dense(layer.out_features)
    raise TypeError(f"unknown layer description {layer!r}")


class Shortcut(nn.Module):
    """A projection shortcut, ``downsample`` in the family's blocks: a 1x1 convolution ``conv`` with the block's
    stride, then BN ``bn`` (none in a pre-activation block)."""

    conv_spec: ConvSpec
    batch_norm: bool = True
    training: bool = True

    def setup(self) -> None:
        self.conv = make_layer(self.conv_spec)
        self.bn = make_layer(BatchNormSpec(), self.training) if self.batch_norm else None

    def __call__(self, X: jax.Array) -> jax.Array:
        X = self.conv(X)
        return X if self.bn is None else self.bn(X)
