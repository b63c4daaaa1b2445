"""Gluon layers from layer descriptions: convolutions (grouped ones in channel chunks where MXNet's own kernel
is slow), BatchNorm and dense layers, inferring their input sizes at the first call like the book's, and the
ReLU and named sequential containers the blocks and models use."""

from __future__ import annotations

from typing import Any

from mxnet.gluon import nn

from resnet import specs
from resnet.specs import BatchNormSpec, ConvSpec, DenseSpec, LayerSpec

__all__ = ["ChunkedConv2D", "Shortcut", "make_layer"]

# No BatchNorm subclass here (torch needs one): Gluon's BatchNorm already averages the *biased* batch
# variance and infers its channel count at the first call. It updates the running averages in the
# *backward* pass, though, which ``hooks.apply`` has to allow for.


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
        options = dict(self._kwargs)
        groups, channels = options.pop("num_group"), options.pop("num_filter")
        chunks = channels // self._chunk
        per_chunk = groups // chunks
        if chunks == 1:
            inputs, weights, biases = [x], [weight], [bias]
        else:  # our grouped convolutions map as many channels in as out, so one split serves both sides
            inputs, weights = F.split(x, num_outputs=chunks, axis=1), F.split(weight, num_outputs=chunks, axis=0)
            biases = [None] * chunks if bias is None else F.split(bias, num_outputs=chunks, axis=0)
        outputs = []
        for index, (inputs_, weight_, bias_) in enumerate(zip(inputs, weights, biases)):
            kernel = _block_diagonal(F, weight_, per_chunk)
            operands = (inputs_, kernel) if bias_ is None else (inputs_, kernel, bias_)
            outputs.append(F.Convolution(*operands, name=f"chunk{index}", num_group=1, num_filter=self._chunk,
                                         **options))
        return outputs[0] if chunks == 1 else F.concat(*outputs, dim=1)


def _block_diagonal(F: Any, weight: Any, groups: int) -> Any:
    """A grouped OIHW kernel (out, in // groups, kh, kw) as the dense (out, in, kh, kw) kernel it acts as."""
    if groups == 1:
        return weight
    # (out, in/g, kh, kw) -> (g, out/g, 1, in/g, kh, kw), times eye(g) over the two group axes, then merged
    # back to the dense (out, in, kh, kw).
    blocks = F.expand_dims(F.reshape(weight, shape=(-4, groups, -1, -2)), axis=2)
    eye = F.reshape(F.eye(groups), shape=(groups, 1, groups, 1, 1, 1))
    return F.reshape(F.broadcast_mul(blocks, eye), shape=(-3, -3, -2))


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


def make_layer(layer: LayerSpec) -> nn.HybridBlock:
    """The native layer for a layer description, its input size inferred at the first call."""
    if isinstance(layer, ConvSpec):
        square = layer.in_channels in (None, layer.out_channels)  # a ResNeXt block's is; chunks need it
        chunk = _channels_per_chunk(layer.out_channels, layer.groups) if layer.groups > 1 and square else None
        if chunk is not None:
            # Its input size given, not inferred: the dense form hides the weight's shape from Gluon's inference.
            return ChunkedConv2D(
                layer.out_channels, layer.kernel, layer.stride, layer.padding, groups=layer.groups,
                use_bias=layer.bias, in_channels=layer.out_channels, chunk=chunk,
            )
        return nn.Conv2D(
            layer.out_channels, layer.kernel, layer.stride, layer.padding, groups=layer.groups, use_bias=layer.bias
        )
    if isinstance(layer, BatchNormSpec):
        # Gluon's momentum is the weight of the old running value: the complement of ours.
        return nn.BatchNorm(momentum=1 - specs.BN_MOMENTUM, epsilon=specs.BN_EPSILON)
    if isinstance(layer, DenseSpec):
        return nn.Dense(layer.out_features)
    raise TypeError(f"unknown layer description {layer!r}")


def _relu(F: Any, x: Any) -> Any:
    """ReLU as MXNet's ``Activation`` operator rather than ``F.relu``: the same function and gradient, but
    ``relu`` has no MKL-DNN kernel, so each call converts its input out of MKL-DNN's blocked layout (and the
    next MKL-DNN operator converts it back).
    A ResNeXt block's train step (64 channels, batch 4, 48x48, 2-core CPU) took 22 against 38 ms with 2 groups
    and 17 against 22 ms with 8."""
    return F.Activation(x, act_type="relu")


class Shortcut(nn.HybridBlock):
    """A projection shortcut, ``downsample`` in the family's blocks: a 1x1 convolution ``conv`` with the block's
    stride, then BN ``bn`` (none in a pre-activation block)."""

    def __init__(self, conv_spec: ConvSpec, batch_norm: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.conv = make_layer(conv_spec)
        self.bn = make_layer(BatchNormSpec()) if batch_norm else None

    def hybrid_forward(self, F: Any, X: Any) -> Any:
        X = self.conv(X)
        return X if self.bn is None else self.bn(X)


def _sequential(parts: dict[str, nn.HybridBlock]) -> nn.HybridSequential:
    """A HybridSequential whose children have names, like torch's ``nn.Sequential(OrderedDict(...))``.

    ``add`` would name them "0", "1", ...; setting an attribute registers the child under that name, in
    order, and leaves it reachable as ``seq.<name>``.
    """
    seq = nn.HybridSequential()
    for name, part in parts.items():
        setattr(seq, name, part)
    return seq
