"""The NumPy float64 reference: the oracle every backend is tested against.

It runs the same descriptions (``resnet.specs``) as the backends, with canonical names and layouts, and is
written to be read, not to be fast. A tiny reverse-mode tape gives exact gradients, so tests can compare
every backend's gradients and SGD steps with it, not only its outputs.

Example::

    ref = Reference(spec, weights)          # weights: canonical name -> array (e.g. from a weights file)
    y = ref.forward(x, training=False)      # NCHW in, NCHW (or (N, classes)) out
    loss, grads = ref.loss_and_grads(x, labels)   # mean softmax cross-entropy, canonical-name gradients
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from resnet import specs
from resnet.shapes import tensor_infos
from resnet.specs import BasicSpec, BlockSpec, BottleneckSpec, ConvSpec, ModelSpec, ResidualSpec
from resnet.walk import is_statistic

__all__ = ["Reference", "reference_weights", "softmax_cross_entropy"]


# -------------------------------------------------------------------------------------- the tape


@dataclass(eq=False)
class Node:
    """A value on the tape, with how to send its gradient back to the nodes it was computed from."""

    value: np.ndarray
    parents: tuple[Node, ...] = ()
    backward: Callable[[np.ndarray], Sequence[np.ndarray]] | None = None
    grad: np.ndarray | None = field(default=None, repr=False)


class Tape:
    """Records nodes in creation order (a topological order), then runs backward in reverse."""

    def __init__(self) -> None:
        self.nodes: list[Node] = []

    def node(self, value: np.ndarray, parents: tuple[Node, ...] = (), backward=None) -> Node:
        created = Node(value, parents, backward)
        self.nodes.append(created)
        return created

    def run_backward(self, output: Node, output_grad: np.ndarray) -> None:
        output.grad = np.asarray(output_grad, dtype=np.float64)
        for node in reversed(self.nodes):
            if node.grad is None or node.backward is None:
                continue
            for parent, grad in zip(node.parents, node.backward(node.grad)):
                parent.grad = grad if parent.grad is None else parent.grad + grad


# ------------------------------------------------------------------------------------ operations


def _windows(x: np.ndarray, kernel: int, stride: int) -> np.ndarray:
    """(N, C, H, W) -> (N, C, Ho, Wo, k, k) view of the sliding windows."""
    view = np.lib.stride_tricks.sliding_window_view(x, (kernel, kernel), axis=(2, 3))
    return view[:, :, ::stride, ::stride]


def _unwindow(d_windows: np.ndarray, padded_shape: tuple[int, ...], stride: int) -> np.ndarray:
    """Adjoint of ``_windows``: add each window's gradient back where the window was read."""
    out = np.zeros(padded_shape)
    _, _, ho, wo, k, _ = d_windows.shape
    for i in range(k):
        for j in range(k):
            out[:, :, i : i + stride * ho : stride, j : j + stride * wo : stride] += d_windows[..., i, j]
    return out


def _pad(x: np.ndarray, padding: int, value: float = 0.0) -> np.ndarray:
    return np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)), constant_values=value)


def _unpad(x: np.ndarray, padding: int) -> np.ndarray:
    return x[:, :, padding : x.shape[2] - padding, padding : x.shape[3] - padding] if padding else x


def conv2d(tape: Tape, x: Node, w: Node, b: Node | None, conv: ConvSpec) -> Node:
    """Grouped, strided convolution with symmetric zero padding; kernel in OIHW.

    As matrix products over the windows copied out once per group ("im2col", (groups, N*Ho*Wo, C/g*k*k)):
    NumPy's matmul calls BLAS on contiguous operands, 2.5-12x faster here than einsum over the 7-D window view
    (measured on ResNet-18's shapes at 16x16, float64), with the same sums.
    """
    g, k, s = conv.groups, conv.kernel, conv.stride
    xp = _pad(x.value, conv.padding)
    n, c = xp.shape[:2]
    windows = _windows(xp, k, s)  # n c ho wo k k
    ho, wo = windows.shape[2:4]
    cols = windows.reshape(n, g, c // g, ho, wo, k, k).transpose(1, 0, 3, 4, 2, 5, 6).reshape(g, n * ho * wo, -1)
    wg = w.value.reshape(g, w.value.shape[0] // g, -1)  # g o (c k k)
    y = (cols @ wg.transpose(0, 2, 1)).reshape(g, n, ho, wo, -1).transpose(1, 0, 4, 2, 3).reshape(n, -1, ho, wo)
    if b is not None:
        y = y + b.value[None, :, None, None]

    def backward(dy: np.ndarray):
        dyg = dy.reshape(n, g, -1, ho, wo).transpose(1, 0, 3, 4, 2).reshape(g, n * ho * wo, -1)  # g (n ho wo) o
        dw = (dyg.transpose(0, 2, 1) @ cols).reshape(w.value.shape)
        dwin = (dyg @ wg).reshape(g, n, ho, wo, c // g, k, k).transpose(1, 0, 4, 2, 3, 5, 6)
        dx = _unpad(_unwindow(dwin.reshape(n, c, ho, wo, k, k), xp.shape, s), conv.padding)
        return (dx, dw) + ((dy.sum(axis=(0, 2, 3)),) if b is not None else ())

    return tape.node(y, (x, w) + ((b,) if b is not None else ()), backward)


def batch_norm(tape: Tape, x: Node, gamma: Node, beta: Node, running: dict, training: bool) -> Node:
    """BatchNorm over (N, H, W); in training mode it also updates ``running`` (biased variance)."""
    axes = (0, 2, 3)
    if training:
        mean, var = x.value.mean(axis=axes), x.value.var(axis=axes)
        m = specs.BN_MOMENTUM
        running["mean"] = (1 - m) * running["mean"] + m * mean
        running["var"] = (1 - m) * running["var"] + m * var
    else:
        mean, var = running["mean"], running["var"]
    invstd = 1.0 / np.sqrt(var + specs.BN_EPSILON)
    shape = (1, -1, 1, 1)
    xhat = (x.value - mean.reshape(shape)) * invstd.reshape(shape)
    y = gamma.value.reshape(shape) * xhat + beta.value.reshape(shape)

    def backward(dy: np.ndarray):
        dxhat = dy * gamma.value.reshape(shape)
        if training:
            count = x.value.size / x.value.shape[1]
            dx = (
                dxhat
                - dxhat.mean(axis=axes, keepdims=True)
                - xhat * (dxhat * xhat).sum(axis=axes, keepdims=True) / count
            ) * invstd.reshape(shape)
        else:
            dx = dxhat * invstd.reshape(shape)
        return dx, (dy * xhat).sum(axis=axes), dy.sum(axis=axes)

    return tape.node(y, (x, gamma, beta), backward)


def relu(tape: Tape, x: Node) -> Node:
    """max(x, 0); the gradient at 0 is 0, as in all four frameworks."""
    return tape.node(np.maximum(x.value, 0), (x,), lambda dy: (dy * (x.value > 0),))


def add(tape: Tape, a: Node, b: Node) -> Node:
    """Elementwise sum (the residual connection)."""
    return tape.node(a.value + b.value, (a, b), lambda dy: (dy, dy))


def max_pool(tape: Tape, x: Node, pool: specs.PoolSpec) -> Node:
    """Max pooling; padded cells are minus infinity, so they never win."""
    xp = _pad(x.value, pool.padding, -np.inf)
    win = _windows(xp, pool.kernel, pool.stride)
    flat = win.reshape(*win.shape[:4], -1)
    y = flat.max(axis=-1)

    def backward(dy: np.ndarray):
        # the gradient goes to the first maximum of each window
        onehot = np.zeros_like(flat)
        np.put_along_axis(onehot, flat.argmax(axis=-1)[..., None], 1.0, axis=-1)
        dwin = (onehot * dy[..., None]).reshape(win.shape)
        return (_unpad(_unwindow(dwin, xp.shape, pool.stride), pool.padding),)

    return tape.node(y, (x,), backward)


def global_avg_pool(tape: Tape, x: Node) -> Node:
    """Mean over height and width, flattened to (N, C)."""
    n, c, h, w = x.value.shape
    return tape.node(
        x.value.mean(axis=(2, 3)), (x,), lambda dy: (np.broadcast_to(dy[:, :, None, None] / (h * w), x.value.shape),)
    )


def dense(tape: Tape, x: Node, w: Node, b: Node) -> Node:
    """x @ w.T + b with the canonical (out, in) weight."""
    return tape.node(x.value @ w.value.T + b.value, (x, w, b), lambda dy: (dy @ w.value, dy.T @ x.value, dy.sum(0)))


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean softmax cross-entropy over the batch, and its gradient with respect to the logits."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    n = logits.shape[0]
    loss = -log_probs[np.arange(n), labels].mean()
    dlogits = np.exp(log_probs)
    dlogits[np.arange(n), labels] -= 1
    return float(loss), dlogits / n


# ------------------------------------------------------------------------------------ the models


class Reference:
    """A block or a ResNet, run in float64 NumPy from canonical weights.

    Args:
        spec: the block or model description (``model.spec`` of any backend's model).
        weights: canonical name -> array, including BatchNorm running statistics.
    """

    def __init__(self, spec: BlockSpec | ModelSpec, weights: dict[str, np.ndarray]) -> None:
        self.spec = spec
        self.weights = {name: np.asarray(value, dtype=np.float64).copy() for name, value in weights.items()}

    # layers -----------------------------------------------------------------------------------
    def _conv(self, name: str, x: Node, conv: ConvSpec) -> Node:
        bias = self._params.get(f"{name}.bias")
        return conv2d(self._tape, x, self._params[f"{name}.weight"], bias, conv)

    def _bn(self, name: str, x: Node) -> Node:
        running = {"mean": self.weights[f"{name}.running_mean"], "var": self.weights[f"{name}.running_var"]}
        y = batch_norm(
            self._tape, x, self._params[f"{name}.weight"], self._params[f"{name}.bias"], running, self._training
        )
        self.weights[f"{name}.running_mean"], self.weights[f"{name}.running_var"] = running["mean"], running["var"]
        return y

    def _relu(self, x: Node) -> Node:
        return relu(self._tape, x)

    # blocks -----------------------------------------------------------------------------------
    def _residual(self, p: str, spec: ResidualSpec, x: Node) -> Node:
        layers = spec.layers()
        y = self._relu(self._bn(p + "bn1", self._conv(p + "conv1", x, layers["conv1"])))
        y = self._bn(p + "bn2", self._conv(p + "conv2", y, layers["conv2"]))
        if spec.use_1x1conv:
            x = self._conv(p + "conv3", x, layers["conv3"])
        return self._relu(add(self._tape, y, x))

    def _resnext(self, p: str, spec: specs.ResNeXtSpec, x: Node) -> Node:
        layers = spec.layers()
        y = self._relu(self._bn(p + "bn1", self._conv(p + "conv1", x, layers["conv1"])))
        y = self._relu(self._bn(p + "bn2", self._conv(p + "conv2", y, layers["conv2"])))
        y = self._bn(p + "bn3", self._conv(p + "conv3", y, layers["conv3"]))
        if spec.use_1x1conv:
            x = self._bn(p + "bn4", self._conv(p + "conv4", x, layers["conv4"]))
        return self._relu(add(self._tape, y, x))

    def _basic(self, p: str, spec: BasicSpec, x: Node) -> Node:
        layers = spec.layers()
        if spec.preact:  # BN, ReLU, conv, BN, ReLU, conv; the projection reads the pre-activated input
            y = self._relu(self._bn(p + "bn1", x))
            shortcut = self._conv(p + "downsample.conv", y, layers["downsample.conv"]) if spec.use_1x1conv else x
            y = self._conv(p + "conv1", y, layers["conv1"])
            y = self._conv(p + "conv2", self._relu(self._bn(p + "bn2", y)), layers["conv2"])
            return add(self._tape, y, shortcut)
        y = self._relu(self._bn(p + "bn1", self._conv(p + "conv1", x, layers["conv1"])))
        y = self._bn(p + "bn2", self._conv(p + "conv2", y, layers["conv2"]))
        return self._relu(add(self._tape, y, self._downsample(p, spec, x)))

    def _bottleneck(self, p: str, spec: BottleneckSpec, x: Node) -> Node:
        layers = spec.layers()
        if spec.preact:
            y = self._relu(self._bn(p + "bn1", x))
            shortcut = self._conv(p + "downsample.conv", y, layers["downsample.conv"]) if spec.use_1x1conv else x
            y = self._conv(p + "conv1", y, layers["conv1"])
            y = self._conv(p + "conv2", self._relu(self._bn(p + "bn2", y)), layers["conv2"])
            y = self._conv(p + "conv3", self._relu(self._bn(p + "bn3", y)), layers["conv3"])
            return add(self._tape, y, shortcut)
        y = self._relu(self._bn(p + "bn1", self._conv(p + "conv1", x, layers["conv1"])))
        y = self._relu(self._bn(p + "bn2", self._conv(p + "conv2", y, layers["conv2"])))
        y = self._bn(p + "bn3", self._conv(p + "conv3", y, layers["conv3"]))
        return self._relu(add(self._tape, y, self._downsample(p, spec, x)))

    def _downsample(self, p: str, spec: BasicSpec | BottleneckSpec, x: Node) -> Node:
        """The shortcut of a (post-activation) family block: identity, or 1x1 convolution and BN."""
        if not spec.use_1x1conv:
            return x
        return self._bn(p + "downsample.bn", self._conv(p + "downsample.conv", x, spec.layers()["downsample.conv"]))

    def _block(self, prefix: str, spec: BlockSpec, x: Node) -> Node:
        specs.check_block_input(spec, x.value.shape[1])
        run = {
            ResidualSpec: self._residual,
            specs.ResNeXtSpec: self._resnext,
            BasicSpec: self._basic,
            BottleneckSpec: self._bottleneck,
        }[type(spec)]
        return run(prefix, spec, x)

    def _model(self, spec: ModelSpec, x: Node) -> Node:
        specs.check_model_input(spec, x.value.shape[1])
        stem = spec.stem.layers()
        x = self._conv("b1.conv", x, stem["conv"])
        if "bn" in stem:  # not in a pre-activation stem: its first block's bn1 normalizes the pooled output
            x = self._relu(self._bn("b1.bn", x))
        if spec.stem.pool is not None:  # the multi-GPU ResNet-18's stem has none
            x = max_pool(self._tape, x, spec.stem.pool)
        for prefix, block in spec.blocks():
            x = self._block(prefix + ".", block, x)
        if spec.head.preact:  # ResNet v2's final BN and ReLU
            x = self._relu(self._bn("last.bn", x))
        x = global_avg_pool(self._tape, x)
        return dense(self._tape, x, self._params["last.fc.weight"], self._params["last.fc.bias"])

    # public -----------------------------------------------------------------------------------
    def _run(self, x: np.ndarray, training: bool) -> tuple[Node, dict[str, Node]]:
        self._tape, self._training = Tape(), training
        trainable = [name for name, info in tensor_infos(self.spec, x.shape).items() if info.trainable]
        self._params = {name: self._tape.node(self.weights[name]) for name in trainable}
        inputs = self._tape.node(np.asarray(x, dtype=np.float64))
        if isinstance(self.spec, ModelSpec):
            out = self._model(self.spec, inputs)
        else:
            out = self._block("", self.spec, inputs)
        self._inputs = inputs
        return out, self._params

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        """The output for an NCHW input; in training mode the running statistics in ``weights`` update."""
        return self._run(x, training)[0].value

    def vjp(self, x: np.ndarray, output_grad: np.ndarray, training: bool = True) -> tuple[np.ndarray, dict]:
        """(output, gradients of sum(output * output_grad)): canonical name -> gradient, and "input" for x."""
        out, params = self._run(x, training)
        self._tape.run_backward(out, output_grad)
        grads = self._gradients(params)
        grads["input"] = self._inputs.grad
        return out.value, grads

    def loss_and_grads(self, x: np.ndarray, labels: np.ndarray, training: bool = True) -> tuple[float, dict]:
        """Mean softmax cross-entropy of a model's logits, and its gradient for every trainable tensor."""
        out, params = self._run(x, training)
        loss, dlogits = softmax_cross_entropy(out.value, np.asarray(labels))
        self._tape.run_backward(out, dlogits)
        return loss, self._gradients(params)

    @staticmethod
    def _gradients(params: dict[str, Node]) -> dict[str, np.ndarray]:
        return {name: np.zeros_like(node.value) if node.grad is None else node.grad for name, node in params.items()}

    def sgd_step(self, x: np.ndarray, labels: np.ndarray, lr: float) -> float:
        """One plain SGD step on the mean cross-entropy (training-mode BatchNorm); returns the loss."""
        loss, grads = self.loss_and_grads(x, labels)
        for name, grad in grads.items():
            self.weights[name] = self.weights[name] - lr * grad
        return loss

    def replica_sgd_step(self, x: np.ndarray, labels: np.ndarray, lr: float, slices: Sequence[slice]) -> float:
        """One data-parallel SGD step with BatchNorm statistics per replica (``slices``: each replica's rows,
        ``resnet.parallel.Plan.replica_slices``): each replica's gradient of its mean loss, weighted by its share
        of the batch, summed; the running statistics the mean of the replicas' updates. Returns the batch's
        mean loss. With one slice, ``sgd_step``."""
        start = {name: value.copy() for name, value in self.weights.items()}
        total, summed, running = 0.0, {}, {}
        for rows in slices:
            self.weights = {name: value.copy() for name, value in start.items()}
            share = (rows.stop - rows.start) / len(x)
            loss, grads = self.loss_and_grads(x[rows], np.asarray(labels)[rows])
            total += share * loss
            for name, grad in grads.items():
                summed[name] = summed.get(name, 0.0) + share * grad
            for name in (n for n in start if is_statistic(n)):
                running[name] = running.get(name, 0.0) + self.weights[name] / len(slices)
        self.weights = {name: running.get(name, value) for name, value in start.items()}
        for name, grad in summed.items():
            self.weights[name] = self.weights[name] - lr * grad
        return total


def reference_weights(spec: BlockSpec | ModelSpec, input_shape: Sequence[int], seed: int = 0) -> dict[str, np.ndarray]:
    """Random canonical float32 test weights for a description: He-normal kernels, a small dense layer, small
    biases, BatchNorm scales near 1 and non-trivial running statistics, so that tests exercise every tensor."""
    rng = np.random.default_rng(seed)
    weights = {}
    for name, info in tensor_infos(spec, tuple(input_shape)).items():
        shape = info.shape
        if name.endswith("running_var"):
            value = rng.uniform(0.5, 1.5, shape)
        elif name.endswith("running_mean"):
            value = rng.normal(0.0, 0.1, shape)
        elif name.endswith("weight") and len(shape) == 1:  # BatchNorm scale
            value = rng.uniform(0.8, 1.2, shape)
        elif name.endswith("weight") and len(shape) == 2:
            # a small dense layer keeps the logits near 1, so absolute tolerances on them mean something
            value = rng.normal(0.0, 0.1 / np.sqrt(shape[1]), shape)
        elif name.endswith("weight"):
            fan_in = int(np.prod(shape[1:]))
            value = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
        else:
            value = rng.normal(0.0, 0.05, shape)
        weights[name] = value.astype(np.float32)
    return weights
