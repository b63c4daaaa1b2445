"""Conformance with the book's own code: d2l 1.0.3's ``Residual`` and ``ResNeXtBlock``, given the same weights,
compute what ours compute.

"Ours" here is the NumPy float64 reference (``resnet.reference.Reference``), the oracle that every backend of
this package is held to within 1e-5 in the shared tests. Comparing the book's blocks with the reference
rather than with our backends lets the book's package live in an environment of its own with the old framework
versions it needs (numpy 1.23.5, tensorflow-cpu 2.17.1, jax 0.4.23, flax 0.8.4, mxnet 1.9.1, torch 2.13.0:
``tests/d2l-requirements.txt``), where our backends are neither installed nor needed. Run it with ``nox -s d2l``.

For each case the canonical weights of ``resnet.reference.reference_weights`` (BatchNorm running statistics
included) are written into the book's block in each framework's own layout (torch and Gluon OIHW, Keras and
Flax HWIO kernels; Keras ``gamma``/``beta``/``moving_mean``/``moving_variance``, Flax ``scale``/``bias`` and
``batch_stats``, Gluon ``gamma``/``beta``/``running_mean``/``running_var``), every tensor of the block is
checked to be loaded, and the block runs in inference mode and in training mode (batch statistics).

What the tests show:

* **Same padding, same numbers.** Every stride-1 case in all four frameworks, and the stride-2 cases of the
  book's torch and MXNet code (``padding=1``, as ours), equal the reference within 1e-5.
* **The book's TensorFlow and JAX code pad 'same'.** For a 3x3 convolution with stride 2 on an even size,
  'same' pads 0 before and 1 after, where ours (and the book's torch/MXNet) pads 1 on both sides. There the
  book's TF/JAX blocks differ from the reference by far more than rounding (asserted > 1e-2; measured 3.5 to
  6.8 on outputs up to about 10) while the shapes agree, and they equal, within 1e-5, the reference run with
  'same' padding (``reference_output(..., padding="same")``: the reference's own convolution, after padding its
  input as TensorFlow and XLA do). On odd sizes 'same' pads 1 on both sides, and the book's TF/JAX stride-2
  blocks equal ours again: also tested, so the explanation is demonstrated, not only asserted.
* **BatchNorm epsilon.** The book's layers use each framework's default epsilon: 1e-5 in torch, Flax and Gluon,
  but 1e-3 in Keras. Each comparison runs the reference with the book layer's own epsilon (monkeypatching
  ``resnet.specs.BN_EPSILON``, which the reference reads at run time). ``test_book_batchnorm_epsilon`` pins
  the four defaults and shows that Keras' 1e-3 matters: against the reference with our 1e-5 the book's
  Keras block is off by about 3e-3 (1e-2 for ResNeXt), far beyond the tolerance.
* **The book's ``groups`` is the group width.** The book's ``ResNeXtBlock(c, groups, m)`` passes
  ``round(c * m) // groups`` to the convolution as its number of groups, so our ``ResNeXtBlock(c, g, m)`` (g
  groups) is the book's ``ResNeXtBlock(c, round(c * m) // g, m)``. The weights of ours load into the book's
  block only under that translation (the grouped kernel's shape is checked), and
  ``test_book_groups_is_group_width`` shows the kernel shapes directly.

A d2l framework module that does not import is skipped with the real error: ``d2l.torch`` imports
torchvision, and the registry's torchvision 0.28.0 (the release paired with torch 2.13.0) is a CUDA build that
does not import with the CPU-only torch (``RuntimeError: operator torchvision::nms does not exist``; its
``_C.so`` needs ``libc10_cuda.so``). Neither d2l nor torchvision is patched.

Outside that environment the whole module skips (d2l is not installed). ``RESNET_REQUIRE_D2L=1`` (set by the
nox session) turns that skip into an error, and makes a d2l framework module that fails to import an error too,
except for d2l.torch when torchvision itself is what fails: the session cannot pass by skipping.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.metadata
import math
import os
from dataclasses import dataclass

import numpy as np
import pytest

REQUIRE_D2L = os.environ.get("RESNET_REQUIRE_D2L", "").strip() not in ("", "0")
D2L_VERSION = "1.0.3"

if REQUIRE_D2L:
    import d2l  # noqa: F401  (an ImportError here is the point: the d2l session needs the book's package)

    if importlib.metadata.version("d2l") != D2L_VERSION:
        raise ImportError(
            f"RESNET_REQUIRE_D2L is set but d2l {importlib.metadata.version('d2l')} is installed, "
            f"not {D2L_VERSION}; install tests/d2l-requirements.txt"
        )
else:
    pytest.importorskip(
        "d2l",
        reason=f"the book's package d2l {D2L_VERSION} is not installed here; these tests run in its own "
        "environment (tests/d2l-requirements.txt): nox -s d2l",
    )
    if importlib.metadata.version("d2l") != D2L_VERSION:
        pytest.skip(
            f"d2l {importlib.metadata.version('d2l')} is installed, these tests are for d2l {D2L_VERSION}",
            allow_module_level=True,
        )

from resnet import reference, specs  # noqa: E402
from resnet.reference import Reference, reference_weights  # noqa: E402
from resnet.shapes import tensor_infos  # noqa: E402

FRAMEWORKS = ("torch", "tensorflow", "jax", "mxnet")
#: The frameworks whose book code pads 'same' (asymmetric for stride 2 on even sizes).
SAME_PADDING = ("tensorflow", "jax")
TOLERANCE = 1e-5
#: What "differ" means: far beyond float32 rounding (the measured differences are in the units).
DIFFERENT = 1e-2
MODES = ("inference", "training")


# ------------------------------------------------------------------------------------------------ cases


@dataclass(frozen=True)
class BookCase:
    """One of our blocks (class name and our arguments), an NCHW input shape, and the book's equivalent."""

    name: str
    cls: str
    args: tuple
    input_shape: tuple[int, int, int, int]

    @property
    def spec(self):
        return specs.residual(*self.args) if self.cls == "Residual" else specs.resnext(*self.args)

    def book_args(self, framework: str) -> tuple:
        """The arguments of the book's class that build the same block: the book's ResNeXt ``groups`` is the
        width of each group; the book's JAX code spells strides as a pair."""
        spec = self.spec
        if self.cls == "Residual":
            args = [spec.num_channels, spec.use_1x1conv, spec.strides]
        else:
            args = [spec.num_channels, spec.bot_channels // spec.groups, spec.bot_mul, spec.use_1x1conv, spec.strides]
        if framework == "jax":
            args[-1] = (args[-1], args[-1])
        return tuple(args)

    @property
    def padding_differs(self) -> bool:
        """Whether 'same' padding differs from ours here: some 3x3 convolution has stride 2 on an even size."""
        return self.spec.strides == 2 and any(size % 2 == 0 for size in self.input_shape[2:])

    def weights(self) -> dict[str, np.ndarray]:
        return reference_weights(self.spec, self.input_shape, seed=len(self.name))

    def input(self) -> np.ndarray:
        return np.random.default_rng(sum(map(ord, self.name))).standard_normal(self.input_shape).astype(np.float32)


CASES = [
    BookCase("residual", "Residual", (3,), (4, 3, 6, 6)),
    BookCase("residual_1x1", "Residual", (6, True), (4, 3, 6, 6)),
    BookCase("residual_1x1_s2", "Residual", (6, True, 2), (4, 3, 6, 6)),
    BookCase("residual_1x1_s2_odd", "Residual", (5, True, 2), (3, 4, 7, 7)),
    # ours: 8 groups of 4 channels; the book's ResNeXtBlock(32, 4, 1)
    BookCase("resnext_g8", "ResNeXtBlock", (32, 8, 1), (2, 32, 6, 6)),
    # ours: 2 groups of 16 channels; the book's ResNeXtBlock(64, 16, 0.5, True, 2)
    BookCase("resnext_g2_1x1_s2", "ResNeXtBlock", (64, 2, 0.5, True, 2), (2, 16, 8, 8)),
    # ours: 8 groups of 4 channels; the book's ResNeXtBlock(64, 4, 0.5, True, 2)
    BookCase("resnext_g8_1x1_s2_odd", "ResNeXtBlock", (64, 8, 0.5, True, 2), (2, 16, 7, 7)),
]


def _agrees(framework: str, case: BookCase) -> bool:
    return framework not in SAME_PADDING or not case.padding_differs


AGREEING = [
    pytest.param(fw, case, mode, id=f"d2l={fw}-{case.name}-{mode}")
    for fw in FRAMEWORKS
    for case in CASES
    for mode in MODES
    if _agrees(fw, case)
]
DIFFERING = [
    pytest.param(fw, case, mode, id=f"d2l={fw}-{case.name}-{mode}")
    for fw in FRAMEWORKS
    for case in CASES
    for mode in MODES
    if not _agrees(fw, case)
]


# ------------------------------------------------------------------------------------ the reference


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(before, after) padding of TensorFlow's and XLA's 'same' (``lax.padtype_to_pads``): the output has
    ceil(size / stride) positions and the odd cell of padding goes after."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _same_padding_conv2d(tape, x, w, b, conv):
    """The reference's convolution on an input padded the 'same' way (the book's TF/JAX ``padding='same'``;
    its Keras 1x1 convolutions pad 'valid', which for a 1x1 kernel is the same: no padding)."""
    (top, bottom), (left, right) = (same_padding(size, conv.kernel, conv.stride) for size in x.value.shape[2:])
    height, width = x.value.shape[2:]
    padded = tape.node(
        np.pad(x.value, ((0, 0), (0, 0), (top, bottom), (left, right))),
        (x,),
        lambda dy: (dy[:, :, top : top + height, left : left + width],),
    )
    return _REFERENCE_CONV2D(tape, padded, w, b, dataclasses.replace(conv, padding=0))


_REFERENCE_CONV2D = reference.conv2d


def reference_output(case: BookCase, weights, x, training: bool, epsilon: float, padding: str = "ours") -> np.ndarray:
    """The reference's output with BatchNorm epsilon ``epsilon``, and our symmetric padding (``"ours"``) or the
    book's TF/JAX 'same' padding (``"same"``)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(specs, "BN_EPSILON", epsilon)
        if padding == "same":
            patch.setattr(reference, "conv2d", _same_padding_conv2d)
        return Reference(case.spec, weights).forward(x, training=training)


# ------------------------------------------------------------------------- the book's blocks, by framework


class BookTorch:
    """d2l.torch: lazy modules, OIHW kernels, state_dict names equal to the canonical ones."""

    def __init__(self, d2l):
        import torch

        self.d2l, self.torch = d2l, torch

    def build(self, cls, args, x):
        block = getattr(self.d2l, cls)(*args)
        with self.torch.no_grad():
            block.eval()(self.torch.from_numpy(x))  # materializes the lazy layers
        return block

    def tensors(self, block):
        state = block.state_dict()
        return {name: value for name, value in state.items() if not name.endswith("num_batches_tracked")}

    def load(self, block, weights):
        state = block.state_dict()
        for name, value in weights.items():
            state[name] = self.torch.from_numpy(value)
        block.load_state_dict(state)  # checks names and shapes

    def kernel_oihw_shape(self, block, name):
        return tuple(getattr(block, name).weight.shape)

    def forward(self, block, x, training):
        block.train(training)
        with self.torch.no_grad():
            return block(self.torch.from_numpy(x)).numpy()

    def bn_epsilon(self, block):
        return block.bn1.eps


class BookTensorFlow:
    """d2l.tensorflow: Keras layers, NHWC, HWIO kernels; BatchNormalization gamma/beta/moving_mean/moving_variance."""

    BN = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}

    def __init__(self, d2l):
        import tensorflow as tf

        self.d2l, self.tf = d2l, tf

    def build(self, cls, args, x):
        block = getattr(self.d2l, cls)(*args)
        block(self.tf.constant(x.transpose(0, 2, 3, 1)))  # creates the variables
        return block

    def _variable(self, block, name):
        layer, tensor = name.split(".")
        attribute = self.BN[tensor] if layer.startswith("bn") else {"weight": "kernel"}.get(tensor, tensor)
        return getattr(getattr(block, layer), attribute)

    def tensors(self, block):
        return {v.path if hasattr(v, "path") else v.name: v for v in block.weights}

    def load(self, block, weights):
        for name, value in weights.items():
            variable = self._variable(block, name)
            value = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value
            assert tuple(variable.shape) == value.shape, (name, tuple(variable.shape), value.shape)
            variable.assign(value)

    def kernel_oihw_shape(self, block, name):
        h, w, i, o = getattr(block, name).kernel.shape
        return (o, i, h, w)

    def forward(self, block, x, training):
        return block(self.tf.constant(x.transpose(0, 2, 3, 1)), training=training).numpy().transpose(0, 3, 1, 2)

    def bn_epsilon(self, block):
        return block.bn1.epsilon


class BookJax:
    """d2l.jax: Flax linen modules with a ``training`` field, NHWC, HWIO kernels; params and batch_stats trees."""

    def __init__(self, d2l):
        import flax
        import jax

        self.d2l, self.jax, self.flax = d2l, jax, flax

    def build(self, cls, args, x):
        module = getattr(self.d2l, cls)(*args, training=False)
        variables = module.init(self.jax.random.PRNGKey(0), x.transpose(0, 2, 3, 1))
        return {"cls": cls, "args": args, "variables": self.flax.core.unfreeze(variables)}

    @staticmethod
    def _path(name):
        layer, tensor = name.split(".")
        if tensor in ("running_mean", "running_var"):
            return "batch_stats", layer, tensor[len("running_") :]
        if layer.startswith("bn"):
            return "params", layer, {"weight": "scale"}.get(tensor, tensor)
        return "params", layer, {"weight": "kernel"}.get(tensor, tensor)

    def tensors(self, block):
        flat = self.flax.traverse_util.flatten_dict(block["variables"])
        return {"/".join(path): value for path, value in flat.items()}

    def load(self, block, weights):
        for name, value in weights.items():
            collection, layer, tensor = self._path(name)
            value = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value
            old = block["variables"][collection][layer][tensor]
            assert old.shape == value.shape, (name, old.shape, value.shape)
            block["variables"][collection][layer][tensor] = self.jax.numpy.asarray(value)

    def kernel_oihw_shape(self, block, name):
        h, w, i, o = block["variables"]["params"][name]["kernel"].shape
        return (o, i, h, w)

    def forward(self, block, x, training):
        module = getattr(self.d2l, block["cls"])(*block["args"], training=training)
        x = x.transpose(0, 2, 3, 1)
        if training:
            y, _ = module.apply(block["variables"], x, mutable=["batch_stats"])
        else:
            y = module.apply(block["variables"], x)
        return np.asarray(y).transpose(0, 3, 1, 2)

    def bn_epsilon(self, block):
        module = getattr(self.d2l, block["cls"])(*block["args"], training=False)
        return module.bind(block["variables"]).bn1.epsilon


class BookMXNet:
    """d2l.mxnet: Gluon blocks (deferred initialization) on MXNet's NumPy interface, as the book's notebooks
    set it up (``npx.set_np()``), NCHW, OIHW kernels; BatchNorm gamma/beta/running_mean/running_var."""

    BN = {"weight": "gamma", "bias": "beta", "running_mean": "running_mean", "running_var": "running_var"}

    def __init__(self, d2l):
        import mxnet

        mxnet.npx.set_np()
        self.d2l, self.mx = d2l, mxnet

    def build(self, cls, args, x):
        block = getattr(self.d2l, cls)(*args)
        block.initialize()
        block(self.mx.np.array(x))  # deferred initialization
        return block

    def tensors(self, block):
        return dict(block.collect_params().items())

    def load(self, block, weights):
        for name, value in weights.items():
            layer, tensor = name.split(".")
            parameter = getattr(getattr(block, layer), self.BN[tensor] if layer.startswith("bn") else tensor)
            assert parameter.shape == value.shape, (name, parameter.shape, value.shape)
            parameter.set_data(self.mx.np.array(value))

    def kernel_oihw_shape(self, block, name):
        return tuple(getattr(block, name).weight.shape)

    def forward(self, block, x, training):
        x = self.mx.np.array(x)
        if training:
            with self.mx.autograd.record():  # training mode, as in the book's training loop
                y = block(x)
        else:
            y = block(x)
        return y.asnumpy()

    def bn_epsilon(self, block):
        return block.bn1._kwargs["eps"]


ADAPTERS = {"torch": BookTorch, "tensorflow": BookTensorFlow, "jax": BookJax, "mxnet": BookMXNet}


@functools.cache
def _import_book(framework: str):
    """(d2l.<framework> module or None, the import error or None)."""
    if framework in ("tensorflow", "jax"):  # d2l.jax imports TensorFlow too
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        return importlib.import_module(f"d2l.{framework}"), None
    except Exception as error:  # noqa: BLE001 - any import failure is reported, e.g. torchvision's RuntimeError
        return None, error


def _torchvision_error() -> Exception | None:
    try:
        importlib.import_module("torchvision")
    except Exception as error:  # noqa: BLE001
        return error
    return None


@pytest.fixture
def book(framework: str):
    """The adapter for the book's blocks in ``framework``, or a skip saying why d2l.<framework> does not import."""
    module, error = _import_book(framework)
    if module is None:
        if framework == "torch" and (tv_error := _torchvision_error()) is not None:
            import torch

            build = "CPU-only " if torch.version.cuda is None else ""
            pytest.skip(
                f"d2l.torch imports torchvision, which does not import with this {build}torch {torch.__version__}: "
                f"{type(tv_error).__name__}: {tv_error}"
            )
        reason = f"d2l.{framework} does not import here: {type(error).__name__}: {error}"
        if REQUIRE_D2L:
            pytest.fail(reason + " (RESNET_REQUIRE_D2L is set)")
        pytest.skip(reason)
    return ADAPTERS[framework](module)


def run_book(book, case: BookCase, framework: str, mode: str):
    """The book's block with the case's canonical weights loaded: (output, epsilon, weights, input)."""
    weights, x = case.weights(), case.input()
    block = book.build(case.cls, case.book_args(framework), x)
    native = book.tensors(block)
    assert len(native) == len(weights), (
        f"the book's block has {len(native)} tensors ({', '.join(native)}), the canonical list "
        f"{len(weights)} ({', '.join(weights)})"
    )
    book.load(block, weights)
    out = book.forward(block, x, training=(mode == "training"))
    return out, book.bn_epsilon(block), weights, x


# --------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("framework, case, mode", AGREEING)
def test_book_block_matches_reference(book, framework, case, mode, record_property):
    """Where the book's padding is ours (stride 1 everywhere; stride 2 in torch and MXNet, and on odd sizes in
    TF/JAX), the book's block equals the reference run with the book layer's BatchNorm epsilon."""
    out, epsilon, weights, x = run_book(book, case, framework, mode)
    expected = reference_output(case, weights, x, mode == "training", epsilon)
    assert out.shape == expected.shape
    diff = float(np.abs(out - expected).max())
    record_property("max_abs_diff", diff)
    assert diff <= TOLERANCE, f"d2l.{framework} {case.name} ({mode}) differs from the reference by {diff:.3g}"


@pytest.mark.parametrize("framework, case, mode", DIFFERING)
def test_book_same_padding_differs_and_is_explained(book, framework, case, mode, record_property):
    """The book's TF/JAX stride-2 blocks on even sizes: same shape as ours, different numbers (asserted beyond
    rounding), and equal to the reference with TensorFlow/XLA 'same' padding (0 before, 1 after)."""
    out, epsilon, weights, x = run_book(book, case, framework, mode)
    ours = reference_output(case, weights, x, mode == "training", epsilon)
    same = reference_output(case, weights, x, mode == "training", epsilon, padding="same")
    assert out.shape == ours.shape == same.shape
    diff_ours, diff_same = float(np.abs(out - ours).max()), float(np.abs(out - same).max())
    record_property("max_abs_diff_from_ours", diff_ours)
    record_property("max_abs_diff_from_same_padding", diff_same)
    assert diff_ours > DIFFERENT, f"expected the book's 'same' padding to change the numbers; max diff {diff_ours:.3g}"
    assert diff_same <= TOLERANCE, f"the book's block differs from the 'same'-padded reference by {diff_same:.3g}"


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_same_padding_differs_from_ours_exactly_when_expected(case):
    """Framework-free: 'same' padding equals ours (to float64 rounding) on stride 1 and on odd sizes, and
    differs on even sizes with stride 2, so the cases above discriminate between the two paddings."""
    weights, x = case.weights(), case.input()
    for training in (False, True):
        ours = reference_output(case, weights, x, training, specs.BN_EPSILON)
        same = reference_output(case, weights, x, training, specs.BN_EPSILON, padding="same")
        diff = float(np.abs(ours - same).max())
        if case.padding_differs:
            assert diff > DIFFERENT
        else:
            assert diff < 1e-12


def test_same_padding_arithmetic():
    """'same' pads (1, 1) for 3x3 stride 1, (0, 1) for 3x3 stride 2 on even sizes, (1, 1) on odd ones, and
    nothing for 1x1 (as Keras' 'valid')."""
    assert same_padding(6, 3, 1) == same_padding(7, 3, 1) == (1, 1)
    assert same_padding(6, 3, 2) == same_padding(8, 3, 2) == (0, 1)
    assert same_padding(7, 3, 2) == (1, 1)
    assert same_padding(6, 1, 2) == same_padding(7, 1, 2) == same_padding(6, 1, 1) == (0, 0)
    assert same_padding(96, 7, 2) == (2, 3)  # the stem, for the record


EPSILONS = {"torch": 1e-5, "tensorflow": 1e-3, "jax": 1e-5, "mxnet": 1e-5}


@pytest.mark.parametrize("framework", FRAMEWORKS, ids=[f"d2l={fw}" for fw in FRAMEWORKS])
def test_book_batchnorm_epsilon(book, framework, record_property):
    """The book's BatchNorm layers keep each framework's default epsilon: Keras' is 1e-3, the others' 1e-5
    (ours, ``specs.BN_EPSILON``). Where it is not ours, it matters: the reference with our epsilon differs."""
    case = CASES[0]
    out, epsilon, weights, x = run_book(book, case, framework, "inference")
    assert epsilon == pytest.approx(EPSILONS[framework], rel=1e-6)
    diff_ours = float(np.abs(out - reference_output(case, weights, x, False, specs.BN_EPSILON)).max())
    record_property("max_abs_diff_with_our_epsilon", diff_ours)
    if epsilon == pytest.approx(specs.BN_EPSILON, rel=1e-6):
        assert diff_ours <= TOLERANCE
    else:
        assert diff_ours > 10 * TOLERANCE, f"epsilon {epsilon:g} vs {specs.BN_EPSILON:g} changed only {diff_ours:.3g}"


@pytest.mark.parametrize("framework", FRAMEWORKS, ids=[f"d2l={fw}" for fw in FRAMEWORKS])
def test_book_groups_is_group_width(book, framework):
    """The book's ResNeXtBlock(32, 8, 1) has 4 groups of 8 channels (its ``groups`` is the group width); ours
    has 8 groups of 4, and the book's equivalent of ours is ResNeXtBlock(32, 4, 1)."""
    x = np.zeros((1, 32, 6, 6), np.float32)
    args = (32, 8, 1) if framework != "jax" else (32, 8, 1, False, (1, 1))
    book_kernel = book.kernel_oihw_shape(book.build("ResNeXtBlock", args, x), "conv2")
    assert book_kernel == (32, 8, 3, 3)  # OIHW: 8 input channels per group -> 32 // 8 = 4 groups
    ours = lambda groups: tensor_infos(specs.resnext(32, groups, 1), x.shape)["conv2.weight"].shape  # noqa: E731
    assert ours(8) == (32, 4, 3, 3)  # 8 groups of 4
    assert ours(4) == book_kernel
    resnext_g8 = next(case for case in CASES if case.name == "resnext_g8")
    assert resnext_g8.book_args(framework)[1] == 4  # how the conformance cases translate ours (32, 8, 1)
