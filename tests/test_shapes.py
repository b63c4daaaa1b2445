"""The chapter's shapes: every backend gives the chapter's blocks and ResNets (and the multi-GPU section's
ResNet-18) the shapes of the shared shape arithmetic, in NCHW order, and the same parameter counts; bad arguments
and inputs (an NHWC shape given as NCHW) are refused clearly."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import resnet
from resnet import specs
from resnet.reference import Reference, reference_weights
from resnet.shapes import block_output_shape, model_part_shapes, num_trainable

CHAPTER_BLOCKS = [
    pytest.param(lambda rn: rn.Residual(3), (4, 3, 6, 6), (4, 3, 6, 6), id="Residual(3)"),
    pytest.param(
        lambda rn: rn.Residual(6, use_1x1conv=True, strides=2), (4, 3, 6, 6), (4, 6, 3, 3), id="Residual(6,1x1,s2)"
    ),
    pytest.param(lambda rn: rn.ResNeXtBlock(32, 16, 1), (4, 32, 96, 96), (4, 32, 96, 96), id="ResNeXtBlock(32,16,1)"),
    pytest.param(
        lambda rn: rn.ResNeXtBlock(64, 16, 0.5, use_1x1conv=True, strides=2),
        (2, 32, 96, 96),
        (2, 64, 48, 48),
        id="ResNeXtBlock(64,16,0.5,1x1,s2)",
    ),
]

RESNET18_SUMMARY = [
    "b1    output shape: (1, 64, 24, 24)",
    "b2    output shape: (1, 64, 24, 24)",
    "b3    output shape: (1, 128, 12, 12)",
    "b4    output shape: (1, 256, 6, 6)",
    "b5    output shape: (1, 512, 3, 3)",
    "last  output shape: (1, 10)",
]


@pytest.mark.parametrize("make, input_shape, expected", CHAPTER_BLOCKS)
def test_chapter_block_shapes(rn, make, input_shape, expected):
    block = make(rn)
    assert resnet.output_shape(block, input_shape) == expected
    assert block_output_shape(block.spec, input_shape) == expected


@pytest.mark.parametrize("make, input_shape, expected", CHAPTER_BLOCKS)
def test_chapter_block_num_params(rn, make, input_shape, expected):
    block = make(rn)
    assert resnet.num_params(block, input_shape) == num_trainable(block.spec, input_shape)


def test_resnet18_layer_summary(rn, capsys):
    model = rn.ResNet18()
    resnet.layer_summary(model, (1, 1, 96, 96))
    assert capsys.readouterr().out.splitlines() == RESNET18_SUMMARY


def test_resnet18_num_params_book_value(rn):
    # 1 input channel, 10 classes, conv biases as in the book
    assert resnet.num_params(rn.ResNet18(), (1, 1, 96, 96)) == 11_178_378


#: The multi-GPU section's ResNet-18 at (1, 1, 96, 96), NCHW: without the stem's stride and max pooling, b1 and b2
#: keep the input's 96x96 (the chapter's ResNet-18 has 24x24 there) and b5 is 12x12.
MULTIGPU_SUMMARY = [
    ("b1", (1, 64, 96, 96)),
    ("b2", (1, 64, 96, 96)),
    ("b3", (1, 128, 48, 48)),
    ("b4", (1, 256, 24, 24)),
    ("b5", (1, 512, 12, 12)),
    ("last", (1, 10)),
]


class _RecordingReference(Reference):
    """The NumPy reference, noting the input and output shape of every block it runs (prefix ``b2.0.``...)."""

    def _block(self, prefix, spec, x):
        out = super()._block(prefix, spec, x)
        self.seen.append((prefix.split(".")[0], x.value.shape, out.value.shape))
        return out


def _reference_part_shapes(spec, input_shape):
    """Each part's output shape as the NumPy reference computes it: the stem's is the first block's input, a
    stage's its last block's output, the head's the logits."""
    reference = _RecordingReference(spec, reference_weights(spec, input_shape))
    reference.seen = []
    logits = reference.forward(np.zeros(input_shape, np.float32))
    parts = {"b1": reference.seen[0][1]}
    for stage, _, out in reference.seen:
        parts[stage] = out  # the last block of each stage wins
    return [*parts.items(), ("last", logits.shape)]


def test_multigpu_resnet18_shapes_are_the_books(rn):
    """``resnet18_multigpu()``, the book's ``resnet18(10, in_channels=1)``: each part's shape at 96x96 in this
    backend, in the shared shape arithmetic and in the NumPy reference, and the book's PyTorch parameter count
    (the chapter's ResNet-18's 11,178,378 less 64 x 40 for the 3x3 instead of the 7x7 kernel)."""
    model, shape = rn.resnet18_multigpu(), (1, 1, 96, 96)
    lines = resnet.summary_lines(model, shape)
    assert [(line.split()[0], line.split("output shape: ")[1]) for line in lines] == [
        (part, str(part_shape)) for part, part_shape in MULTIGPU_SUMMARY
    ]
    assert model_part_shapes(model.spec, shape) == MULTIGPU_SUMMARY
    assert _reference_part_shapes(model.spec, shape) == MULTIGPU_SUMMARY
    assert resnet.output_shape(model, shape) == (1, 10)
    assert resnet.num_params(model, shape) == num_trainable(model.spec, shape) == 11_175_818


def test_resnet_custom_arch_and_classes(rn):
    model = rn.ResNet(((1, 64), (1, 96)), num_classes=7)
    lines = resnet.summary_lines(model, (2, 3, 40, 40))
    expected = model_part_shapes(model.spec, (2, 3, 40, 40))
    assert [line.split()[0] for line in lines] == [name for name, _ in expected]
    assert [line.split("output shape: ")[1] for line in lines] == [str(shape) for _, shape in expected]
    assert resnet.num_params(model, (2, 3, 40, 40)) == num_trainable(model.spec, (2, 3, 40, 40))


def test_block_method_as_in_book(rn):
    stage = rn.ResNet18().block(2, 128)
    assert resnet.output_shape(stage[0], (1, 64, 8, 8)) == (1, 128, 4, 4)


@pytest.mark.parametrize("size", [7, 13])
def test_odd_sizes_through_stride_2(rn, size):
    block = rn.Residual(8, use_1x1conv=True, strides=2)
    half = (size + 1) // 2
    assert resnet.output_shape(block, (2, 3, size, size)) == (2, 8, half, half)
    nxt = rn.ResNeXtBlock(16, 4, 0.5, use_1x1conv=True, strides=2)
    assert resnet.output_shape(nxt, (2, 3, size, size)) == (2, 16, half, half)
    model = rn.ResNet(((1, 64), (1, 128)), num_classes=3)
    shape = (1, 1, size * 4 + 1, size * 4 + 1)
    assert resnet.summary_lines(model, shape) == [
        f"{name:<4}  output shape: {part}" for name, part in model_part_shapes(model.spec, shape)
    ]


def test_random_input_is_native_and_nchw_seeded(rn, backend_name, fresh_selection):
    resnet.set_backend(backend_name)
    x = resnet.random_input((2, 3, 5, 7), seed=3)
    y = rn.to_numpy(x)
    assert y.shape == (2, 3, 5, 7)
    assert (y == rn.to_numpy(resnet.random_input((2, 3, 5, 7), seed=3))).all()


@st.composite
def block_configs(draw):
    kind = draw(st.sampled_from(["residual", "resnext"]))
    strides = draw(st.sampled_from([1, 2]))
    in_channels = draw(st.integers(1, 12))
    size = draw(st.integers(1, 11))
    use_1x1conv = draw(st.booleans()) or strides == 2
    if kind == "residual":
        channels = draw(st.integers(1, 12)) if use_1x1conv else in_channels
        return kind, (channels, use_1x1conv, strides), (2, in_channels, size, size)
    groups = draw(st.sampled_from([1, 2, 4]))
    bot = groups * draw(st.integers(1, 3))
    channels = bot * draw(st.sampled_from([1, 2])) if use_1x1conv else in_channels
    bot_mul = bot / channels
    if not use_1x1conv:
        in_channels = channels
    return kind, (channels, groups, bot_mul, use_1x1conv, strides), (2, in_channels, size, size)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(config=block_configs())
def test_generated_blocks_match_shape_arithmetic(rn, config):
    kind, args, input_shape = config
    block = rn.Residual(*args) if kind == "residual" else rn.ResNeXtBlock(*args)
    expected = block_output_shape(block.spec, input_shape)
    assert resnet.output_shape(block, input_shape) == expected
    assert resnet.num_params(block, input_shape) == num_trainable(block.spec, input_shape)


def test_identity_shortcut_with_wrong_input_is_clear(rn):
    with pytest.raises(ValueError, match="identity shortcut.*use_1x1conv=True"):
        resnet.output_shape(rn.Residual(8), (1, 3, 6, 6))


@pytest.mark.parametrize(
    "args, message",
    [
        ((30, 4, 1), "30 channels .* not divisible by groups=4"),
        ((32, 0, 1), "groups must be a positive integer"),
        ((32, 2, 0), "bot_mul must be a positive, finite number, got 0"),
        ((32, 2, float("inf")), "bot_mul must be a positive, finite number, got inf"),
        ((32, 2, float("nan")), "bot_mul must be a positive, finite number, got nan"),
        ((32, 2, 10**400), "bot_mul must be a positive, finite number, got 1000"),
        ((32, 2, 1e300), "bot_mul=1e.300 gives 3.2e.301 bottleneck channels .* more than 2147483647"),
        ((2**40, 2, 1), "num_channels must be a positive integer of at most 2147483647"),
        ((32, 2, 1, False, 3), "strides must be 1 or 2"),
    ],
)
def test_resnext_bad_arguments(rn, args, message):
    with pytest.raises(ValueError, match=message):
        rn.ResNeXtBlock(*args)


@pytest.mark.parametrize(
    "args, message",
    [
        ((0,), "num_channels must be a positive integer"),
        ((3.5,), "num_channels"),
        ((8, True, (2, 1)), "pair of equal"),
        ((float("inf"),), "num_channels must be a positive integer, got inf"),
        ((2**31,), "num_channels must be a positive integer of at most 2147483647 .2..31 - 1., got 2147483648"),
    ],
)
def test_residual_bad_arguments(rn, args, message):
    with pytest.raises(ValueError, match=message):
        rn.Residual(*args)


def test_bad_arch(rn):
    with pytest.raises(ValueError, match="arch must be"):
        rn.ResNet([64, 128])


def test_bad_input_shape(rn):
    with pytest.raises(ValueError, match="four positive integers in NCHW"):
        resnet.output_shape(rn.Residual(3), (3, 6, 6))


NHWC_CALLS = {
    "layer_summary": lambda model, shape: resnet.layer_summary(model, shape),
    "output_shape": resnet.output_shape,
    "num_params": resnet.num_params,
    "macs": resnet.macs,
    "forward": lambda model, shape: resnet.forward(model, np.zeros(shape, np.float32)),
}


@pytest.mark.parametrize("call", NHWC_CALLS, ids=list(NHWC_CALLS))
def test_nhwc_shape_to_the_nchw_api_says_so(rn, call):
    """The book's TensorFlow/JAX shape (1, 96, 96, 1) given to the NCHW common API: a ValueError naming the shape,
    saying the API takes NCHW and giving the NCHW shape, and the NHWC ways (layout="NHWC", the model's method)."""
    with pytest.raises(ValueError) as caught:
        NHWC_CALLS[call](rn.ResNet18(), (1, 96, 96, 1))
    message = str(caught.value)
    assert "(1, 96, 96, 1) looks like NHWC" in message and "takes NCHW" in message
    assert "pass (1, 1, 96, 96)" in message and 'layout="NHWC"' in message and "model.layer_summary" in message


def test_nchw_shape_with_layout_nhwc_says_so(rn):
    with pytest.raises(ValueError, match=r"\(1, 1, 96, 96\) looks like NCHW.*pass \(1, 96, 96, 1\)"):
        resnet.summary_lines(rn.ResNet18(), (1, 1, 96, 96), layout="NHWC")
    lines = resnet.summary_lines(rn.ResNet18(), (1, 96, 96, 1), layout="NHWC")
    assert lines[-2] == "b5    output shape: (1, 3, 3, 512)"


def test_layout_rule_never_refuses_a_square_nchw_input():
    """The rule (resnet.api's docstring) refuses (N, A, A, 1 or 3) with A > 4 only: every square NCHW input, and
    the non-square ones a block sees deep in a network such as (1, 512, 3, 3), pass."""
    from resnet.api import check_input_shape

    for shape in [(n, c, s, s) for n in (1, 2) for c in range(1, 70) for s in range(1, 40)]:
        assert check_input_shape(shape) == shape
    for shape in [(1, 512, 3, 3), (1, 3, 3, 3), (1, 4, 4, 1), (2, 64, 3, 1), (1, 96, 95, 1), (1, 96, 96, 2)]:
        assert check_input_shape(shape) == shape
    for shape in [(1, 96, 96, 1), (8, 224, 224, 3), (1, 5, 5, 1)]:
        with pytest.raises(ValueError, match="looks like NHWC"):
            check_input_shape(shape)
    for shape in [(1, 96, 96, 1), (1, 512, 3, 3), (1, 3, 3, 3)]:  # NHWC shapes that pass as NHWC
        assert check_input_shape(shape, "NHWC") == shape


def test_book_groups_convention_documented():
    # the book's ResNeXtBlock(32, 16, 1) has 2 groups of 16 channels: ours with groups=2
    assert specs.resnext(32, 2, 1).layers()["conv2"].groups == 2
    assert specs.resnext(32, 2, 1).group_width == 16
    assert specs.resnext(32, 16, 1).group_width == 2
