"""Bad input, one policy in every backend (``resnet.api.check_batch``): a batch with other channels than the
model was built for or its description requires, an empty batch, NaN or infinite values, and complex, object
or string arrays are refused with a clear error before anything is built or run; booleans, integers and other
float precisions are converted to the model's. The framework's own calls (``model(x)``, Flax's
``model.apply``, the Keras call) refuse what they would otherwise get silently wrong: TensorFlow's convolution a
channel count it was not built for (it would compute a grouped convolution), BatchNorm in training mode an
empty batch (Flax and Keras would write NaN into the running averages). After a refused batch the weights and
running statistics are what they were.
"""

from __future__ import annotations

import numpy as np
import pytest

import resnet
from resnet.walk import is_statistic

TINY_ARCH = ((1, 64), (1, 8))  # the book's first stage keeps the stem's 64 channels
SHAPE = (2, 1, 16, 16)
MODES = pytest.mark.parametrize("training", [False, True], ids=["inference", "training"])


def tiny_model(rn):
    """A two-stage book ResNet, built for ``SHAPE`` (one input channel)."""
    model = rn.ResNet(TINY_ARCH, num_classes=3)
    rn.build(model, SHAPE)
    return model


def batch(shape=SHAPE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def assert_unchanged(rn, model, before: dict[str, np.ndarray]) -> None:
    """Every weight and running statistic as in ``before``, and every running statistic finite."""
    after = rn.get_arrays(model)
    assert after.keys() == before.keys()
    for name, value in after.items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)
        if is_statistic(name):
            assert np.isfinite(value).all(), name


def native_call(rn, model, x: np.ndarray, training: bool):
    """The framework's own call on an NCHW batch, as its users write it: ``model.train(); model(x)`` in PyTorch,
    the Keras call with ``training``, ``model.apply`` with ``mutable=['batch_stats']`` in Flax (its result put
    back as the model's variables), and in Gluon the call under ``autograd.record``, then in training the
    backward pass, which moves BatchNorm's running averages."""
    native = rn.to_native(x)
    if rn.NAME == "torch":
        was_training = model.training
        model.train(training)
        try:
            return model(native)
        finally:
            model.train(was_training)
    if rn.NAME == "tensorflow":
        return model(native, training=training)
    if rn.NAME == "jax":
        module = model.clone(training=training)
        if not training:
            return module.apply(rn.variables(model), native)
        y, updates = module.apply(rn.variables(model), native, mutable=["batch_stats"])
        rn.set_variables(model, {**rn.variables(model), **updates})
        return y
    from mxnet import autograd

    with autograd.record(train_mode=training):
        y = model(native)
    if training:
        y.backward()  # Gluon's BatchNorm moves its running averages in the backward pass
    return y


# ----------------------------------------------------------------------------------------- the channels


@MODES
def test_other_channels_than_the_model_was_built_for_are_refused(rn, training):
    """The book's ResNet takes any channels until it is built; afterwards only those (TensorFlow computed logits
    for 2 channels from a model built for 1, reading them as a grouped convolution)."""
    model = tiny_model(rn)
    before = rn.get_arrays(model)
    assert rn.input_channels(model) == 1
    with pytest.raises(ValueError, match=r"built for 1 input channel, but x has 2 .*build a new model for 2"):
        resnet.forward(model, batch((2, 2, 16, 16)), training)
    assert_unchanged(rn, model, before)


@MODES
def test_a_projection_block_takes_only_the_channels_it_was_built_for(rn, training):
    block = rn.Residual(6, use_1x1conv=True)
    assert rn.input_channels(block) is None  # not built: any channels
    rn.build(block, (2, 3, 8, 8))
    assert rn.input_channels(block) == 3
    before = rn.get_arrays(block)
    with pytest.raises(ValueError, match="built for 3 input channels, but x has 6"):
        resnet.forward(block, batch((2, 6, 8, 8)), training)
    assert_unchanged(rn, block, before)


@MODES
def test_an_identity_block_needs_its_own_channels_before_it_is_built(rn, training):
    block = rn.Residual(4)
    with pytest.raises(ValueError, match="identity shortcut.*3 input channels.*use_1x1conv=True"):
        resnet.forward(block, batch((2, 3, 8, 8)), training)
    assert not rn.is_built(block)  # refused before anything was built


def test_input_channels_of_every_kind_of_first_layer(rn):
    """The hook reads the first layer's weight: the stem's convolution, a block's (grouped) ``conv1``, a
    pre-activation block's ``bn1``."""
    cases = [
        (tiny_model(rn), 1),
        (rn.ResNeXtBlock(8, 2, 1, use_1x1conv=True), 5),
        (rn.PreActBasic(4, use_1x1conv=True), 3),
        (rn.Bottleneck(2, use_1x1conv=True), 7),
    ]
    for model, channels in cases:
        rn.build(model, (2, channels, 8, 8))
        assert rn.input_channels(model) == channels, type(model).__name__


def test_native_call_with_other_channels_raises(rn):
    """TensorFlow's convolution refuses what it would read as a grouped convolution, in a model and in a block
    alone; the other frameworks stop with errors of their own."""
    model, block = tiny_model(rn), rn.Residual(6, use_1x1conv=True)
    rn.build(block, (2, 3, 8, 8))
    expected = ValueError if rn.NAME == "tensorflow" else Exception
    with pytest.raises(expected) as model_error:
        native_call(rn, model, batch((2, 2, 16, 16)), training=False)
    with pytest.raises(expected) as block_error:
        native_call(rn, block, batch((2, 6, 8, 8)), training=False)
    if rn.NAME == "tensorflow":
        assert "b1/conv was built for 1 input channel, but its input has 2" in str(model_error.value)
        assert "conv1 was built for 3 input channels, but its input has 6" in str(block_error.value)


# --------------------------------------------------------------------------------------- an empty batch


@MODES
def test_an_empty_batch_is_refused_and_changes_nothing(rn, training):
    model = tiny_model(rn)
    before = rn.get_arrays(model)
    with pytest.raises(ValueError, match=r"no values: its batch axis is 0 \(shape \(0, 1, 16, 16\)\)"):
        resnet.forward(model, np.zeros((0, 1, 16, 16), np.float32), training)
    assert_unchanged(rn, model, before)
    unbuilt = rn.ResNet(TINY_ARCH, num_classes=3)
    with pytest.raises(ValueError, match="no values"):
        resnet.forward(unbuilt, np.zeros((0, 1, 16, 16), np.float32), training)
    assert not rn.is_built(unbuilt)


def test_an_image_with_no_pixels_is_refused(rn):
    with pytest.raises(ValueError, match="its width axis is 0"):
        resnet.forward(tiny_model(rn), np.zeros((2, 1, 16, 0), np.float32))


def test_native_training_call_on_an_empty_batch_is_refused_by_batch_norm(rn):
    """BatchNorm in training mode refuses an empty batch with the same ValueError in every backend (Flax and
    Keras wrote NaN running averages); a pre-activation block starts with BatchNorm. A real batch afterwards
    still moves the statistics."""
    block = rn.PreActBasic(4)
    rn.build(block, (2, 4, 8, 8))
    before = rn.get_arrays(block)
    with pytest.raises(ValueError, match=r"BatchNorm in training mode got an empty batch \(input shape \(0, "):
        native_call(rn, block, np.zeros((0, 4, 8, 8), np.float32), training=True)
    assert_unchanged(rn, block, before)
    native_call(rn, block, batch((2, 4, 8, 8)), training=True)
    after = rn.get_arrays(block)
    assert any(not np.array_equal(after[name], before[name]) for name in before if is_statistic(name))


def test_native_training_call_of_a_model_on_an_empty_batch_raises_and_leaves_the_statistics(rn):
    """In a ResNet the stem's convolution comes first: PyTorch's and Flax's pass the empty batch on to
    BatchNorm, which refuses it; TensorFlow's and MXNet's oneDNN convolutions stop it with errors of their own."""
    model = tiny_model(rn)
    before = rn.get_arrays(model)
    expected = ValueError if rn.NAME in ("torch", "jax") else Exception
    with pytest.raises(expected) as error:
        native_call(rn, model, np.zeros((0, 1, 16, 16), np.float32), training=True)
    if expected is ValueError:
        assert "BatchNorm in training mode got an empty batch" in str(error.value)
    assert_unchanged(rn, model, before)


# ---------------------------------------------------------------------------------------- the values


def _with(values: dict[tuple[int, ...], float], dtype=np.float32) -> np.ndarray:
    x = batch().astype(dtype)
    for index, value in values.items():
        x[index] = value
    return x


NON_FINITE = {
    "one_nan": (_with({(0, 0, 0, 0): np.nan}), r"1 NaN and 0 infinite values .* index \(0, 0, 0, 0\)"),
    "all_nan": (np.full(SHAPE, np.nan, np.float32), r"512 NaN and 0 infinite values .* index \(0, 0, 0, 0\)"),
    "all_inf": (np.full(SHAPE, np.inf, np.float32), r"0 NaN and 512 infinite values .* index \(0, 0, 0, 0\)"),
    "mixed": (
        _with({(1, 0, 3, 2): -np.inf, (1, 0, 5, 5): np.nan}),
        r"1 NaN and 1 infinite value in .* index \(1, 0, 3, 2\)",
    ),
    "float64_overflow": (
        _with({(0, 0, 7, 1): 1e39}, np.float64),
        r"0 NaN and 1 infinite value in the model's precision float32 \(values beyond float32's range.* \(0, 0, 7, 1\)",
    ),
}


@MODES
@pytest.mark.parametrize("case", list(NON_FINITE), ids=list(NON_FINITE))
def test_non_finite_values_are_refused(rn, training, case):
    """NaN went through to NaN logits in PyTorch and JAX, and came out finite in MXNet (all NaN or all
    infinite) and TensorFlow (one NaN at a corner): now a ValueError everywhere, saying how many and where."""
    x, message = NON_FINITE[case]
    model = tiny_model(rn)
    before = rn.get_arrays(model)
    with pytest.raises(ValueError, match=message + r".*inputs must be finite images"):
        resnet.forward(model, x, training)
    assert_unchanged(rn, model, before)


@pytest.mark.parametrize(
    "x, dtype",
    [
        (batch().astype(np.complex64), "complex64"),
        (np.array([[[["a"]]]]), "<U1"),
        (np.empty((1, 1, 2, 2), object), "object"),
    ],
    ids=["complex", "string", "object"],
)
def test_arrays_of_other_than_real_numbers_are_refused(rn, x, dtype):
    """A complex batch lost its imaginary part without a word in PyTorch, TensorFlow and MXNet."""
    model = tiny_model(rn)
    with pytest.raises(TypeError, match=f"real numbers .* its dtype is {dtype}"):
        resnet.forward(model, x)


@pytest.mark.filterwarnings("ignore:Creating an ndarray from ragged")  # NumPy < 1.24 makes an object array
def test_a_ragged_nested_list_is_refused(rn):
    with pytest.raises(TypeError, match="x must .*NCHW|dtype is object"):
        resnet.forward(tiny_model(rn), [[[[0.0, 1.0]], [[0.0]]]])


@pytest.mark.parametrize("dtype", [np.float64, np.float16, np.int32, np.uint8, bool])
def test_real_dtypes_are_converted_to_the_model_precision(rn, dtype):
    """Booleans, integers and other float precisions give what the same values in float32 give."""
    model = tiny_model(rn)
    x = (batch() * 3).astype(dtype)
    expected = resnet.forward(model, x.astype(np.float32))
    actual = resnet.forward(model, x)
    assert actual.dtype == np.float32
    np.testing.assert_array_equal(actual, expected)


def test_an_absurd_input_shape_is_refused_before_anything_is_allocated(rn):
    """A shape whose input alone would be tens of GiB is a ValueError naming its size, not an allocator error."""
    import resnet

    with pytest.raises(ValueError, match=r"input_shape \(1, 1, 100000, 100000\) is 10,000,000,000 values, 37 GiB"):
        resnet.output_shape(rn.ResNet18(), (1, 1, 100000, 100000))
