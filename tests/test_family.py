"""The whole ResNet family of the chapter's exercises, in every backend.

ResNet-18/34/50/101/152, their pre-activation versions and ResNeXt-50/101, in torchvision's convention, and the
book's multi-GPU ResNet-18: the descriptions (depths, widths, stride placement, pre-activation, stems), parameter
counts equal to torchvision's (and the book's) and multiply-adds its published figures, the model registry, each
backend's builders, and every model building, running forward and backward, and saving and loading neutral weights
in every backend. The family's numbers against the reference are in test_numerics.py, its weights files in
test_weights.py, its commands in test_cli.py.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from helpers import INSTALLED

import resnet
from resnet import specs
from resnet.init import initial_weights
from resnet.models import MODELS, build_model, model_entry
from resnet.shapes import family_table, macs, model_part_shapes, num_trainable, tensor_infos
from resnet.specs import ConvSpec, PoolSpec, StemSpec
from resnet.walk import tensors

#: torchvision's trainable parameters (3 input channels, 1000 classes) and multiply-adds at 224x224 (G).
TORCHVISION = {
    "resnet18": (11_689_512, 1.81),
    "resnet34": (21_797_672, 3.66),
    "resnet50": (25_557_032, 4.09),
    "resnet101": (44_549_160, 7.80),
    "resnet152": (60_192_808, 11.51),
    "resnext50_32x4d": (25_028_904, 4.23),
    "resnext101_32x8d": (88_791_336, 16.41),
}
IMAGENET = (1, 3, 224, 224)
#: timm's ResNetV2 (resnetv2_18 ... resnetv2_152, BatchNorm): trainable parameters (3 input channels, 1000 classes).
#: resnetv2_18's was measured against timm; the others have the same layers (the stem without BN, pre-activated
#: projections, a final BN), so their counts follow: each is the old layout's minus the stem BN's 128.
TIMM_RESNETV2 = {
    "preact_resnet18": 11_687_720,
    "preact_resnet34": 21_795_880,
    "preact_resnet50": 25_549_352,
    "preact_resnet101": 44_541_480,
    "preact_resnet152": 60_185_128,
}


# ------------------------------------------------------------------------- the descriptions (no framework)


@pytest.mark.parametrize("name", TORCHVISION)
def test_spec_counts_match_torchvision(name):
    params, giga_macs = TORCHVISION[name]
    spec = specs.family_spec(name)
    assert num_trainable(spec, IMAGENET) == params
    assert macs(spec, IMAGENET) / 1e9 == pytest.approx(giga_macs, rel=0.01)
    # the stride placement moves multiply-adds, never parameters
    assert num_trainable(specs.family_spec(name, stride_in_1x1=True), IMAGENET) == params


def test_table_1_depths_and_blocks():
    depths = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
    for n, expected in depths.items():
        for name, kind in ((f"resnet{n}", ""), (f"preact_resnet{n}", "preact_")):
            spec = specs.family_spec(name)
            assert tuple(len(blocks) for _, blocks in spec.stages) == expected, name
            assert {b.kind for _, b in spec.blocks()} == {kind + ("basic" if n < 50 else "bottleneck")}, name
            assert spec.part_names == ("b1", "b2", "b3", "b4", "b5", "last")
    resnext = specs.family_spec("resnext50_32x4d")
    assert [blocks[0].width for _, blocks in resnext.stages] == [128, 256, 512, 1024]  # grouped widths
    assert [blocks[0].num_channels for _, blocks in resnext.stages] == [256, 512, 1024, 2048]
    assert {b.groups for _, b in resnext.blocks()} == {32}


def test_torchvision_convention_and_paper_option():
    spec = specs.family_spec("resnet50")
    assert not spec.stem.conv_bias and spec.stem.in_channels == 3
    first = dict(spec.stages)["b3"][0].layers(256)
    assert (first["conv1"].stride, first["conv2"].stride) == (1, 2)  # v1.5: on the 3x3
    assert set(first) >= {"downsample.conv", "downsample.bn"} and not any(
        getattr(layer, "bias", False) for layer in first.values()
    )
    paper = dict(specs.family_spec("resnet50", stride_in_1x1=True).stages)["b3"][0].layers(256)
    assert (paper["conv1"].stride, paper["conv2"].stride) == (2, 1)
    assert macs(specs.family_spec("resnet50", stride_in_1x1=True), IMAGENET) / 1e9 == pytest.approx(3.86, rel=0.01)


@pytest.mark.parametrize("name", TIMM_RESNETV2)
def test_preact_counts_match_timm(name):
    spec = specs.family_spec(name)
    assert num_trainable(spec, IMAGENET) == TIMM_RESNETV2[name]
    assert num_trainable(specs.family_spec(name, stride_in_1x1=True), IMAGENET) == TIMM_RESNETV2[name]
    # the same multiply-adds as the post-activation model of the same depth: the stem's BN was never counted
    assert macs(spec, IMAGENET) == macs(specs.family_spec(name.removeprefix("preact_")), IMAGENET)


def test_preact_stem_has_no_batch_norm():
    """timm's ResNetV2, Keras Hub's use_pre_activation=True and He et al.'s code: the convolution, then the max
    pooling, with no BN or ReLU between them (every block starts with its own); every other stem has them."""
    for name in specs.FAMILY:
        stem = specs.family_spec(name).stem
        preact = name.startswith("preact_")
        assert stem.preact == preact and list(stem.layers()) == (["conv"] if preact else ["conv", "bn"]), name
        assert ("no BN or ReLU" in stem.describe()) == preact, name
    stem = specs.family_spec("preact_resnet18").stem
    assert stem.pool == PoolSpec(3, 2, 1) and stem.layers()["conv"] == ConvSpec(64, 7, 2, 3, bias=False, in_channels=3)
    assert stem.describe() == (
        "a 7x7/2 convolution and 3x3/2 max pooling, no BN or ReLU between them (each block starts with its own)"
    )
    assert "no BN or ReLU between them" in " ".join(specs.FAMILY["preact_resnet50"].docstring.split())
    assert [t.name for t in tensors(specs.family_spec("preact_resnet18"))][:2] == ["b1.conv.weight", "b2.0.bn1.weight"]
    with pytest.raises(ValueError, match="preact must be True or False"):
        StemSpec(preact="yes")


def test_stem_description_reads_as_before_unless_preact():
    """A stem's repr (held in every checkpoint's header, compared on --resume) leaves ``preact=False`` out, so the
    descriptions of every model but the pre-activation ones are what they were before the field existed."""
    assert repr(specs.family_spec("resnet50").stem) == (
        "StemSpec(channels=64, conv_bias=False, in_channels=3, kernel=7, stride=2, max_pool=True)"
    )
    assert (
        repr(StemSpec()) == "StemSpec(channels=64, conv_bias=True, in_channels=None, kernel=7, stride=2, max_pool=True)"
    )
    assert repr(specs.family_spec("preact_resnet18").stem).endswith("max_pool=True, preact=True)")
    assert eval(repr(specs.family_spec("preact_resnet18").stem)) == specs.family_spec("preact_resnet18").stem


def test_preact_models_are_resnet_v2():
    spec = specs.family_spec("preact_resnet50")
    assert spec.head.preact and list(spec.head.layers(2048)) == ["bn", "fc"]  # final BN (and ReLU) before pooling
    layers = dict(spec.stages)["b3"][0].layers(256)
    # BN first; a bare projection
    assert list(layers) == ["bn1", "conv1", "bn2", "conv2", "bn3", "conv3", "downsample.conv"]
    assert layers["bn1"].num_features == 256  # normalizes the block's input
    assert not spec.stem.conv_bias and dict(spec.stages)["b3"][0].preact


def test_multigpu_resnet18_is_the_chapters_with_the_small_stem():
    """The book's ``resnet18(num_classes, in_channels=1)``: the chapter's ResNet-18 (its ``ResNet.block`` stages of
    Residual blocks, conv biases, bare 1x1 projections) behind a 3x3/1 convolution (padding 1), BN and ReLU, no max
    pooling. Every other model keeps the chapter's stem, StemSpec's defaults (7x7/2, 3x3/2 max pooling)."""
    spec, book = specs.family_spec("resnet18_multigpu"), specs.book_resnet(specs.RESNET18_ARCH, 10)
    assert (spec.stages, spec.head, spec.part_names) == (book.stages, book.head, book.part_names)
    assert spec.stem == StemSpec(in_channels=1, kernel=3, stride=1, max_pool=False) and spec.stem.pool is None
    assert spec.stem.layers()["conv"] == ConvSpec(64, 3, 1, 1, bias=True, in_channels=1)
    assert num_trainable(spec, (1, 1, 28, 28)) == 11_175_818  # the book's PyTorch resnet18(10)
    assert macs(spec, (1, 1, 28, 28)) == 455_800_832
    assert specs.family_spec("resnet18_multigpu", stride_in_1x1=True) == spec  # no effect on Residual blocks
    assert specs.family_spec("resnet18_multigpu", 1000, 3) == specs.resnet_spec("residual", (2, 2, 2, 2), stem="small")
    assert StemSpec().layers()["conv"] == ConvSpec(64, 7, 2, 3) and StemSpec().pool == PoolSpec(3, 2, 1)
    assert {specs.family_spec(name).stem.pool for name in specs.FAMILY if name != "resnet18_multigpu"} == {
        PoolSpec(3, 2, 1)
    }
    with pytest.raises(ValueError, match="the stem's kernel must be odd"):
        StemSpec(kernel=4)
    with pytest.raises(ValueError, match="stem must be one of imagenet, small"):
        specs.resnet_spec("basic", (1,), stem="tiny")


def test_macs_by_hand():
    # Residual(3) on 6x6: two 3x3 convolutions, 3 -> 3 channels, 36 positions: 2 * 36 * 3 * 3 * 9
    assert macs(specs.residual(3), (1, 3, 6, 6)) == 2 * 36 * 3 * 3 * 9
    # Bottleneck(4, projection, stride 2) from 8 channels at 8x8: conv1 at 8x8, conv2..3 and shortcut at 4x4
    expected = 64 * 4 * 8 + 16 * 4 * 4 * 9 + 16 * 16 * 4 + 16 * 16 * 8
    assert macs(specs.bottleneck(4, True, 2), (1, 8, 8, 8)) == expected
    # the paper's placement: conv1 strided, so it runs at 4x4 too; the batch multiplies everything
    paper = 16 * 4 * 8 + 16 * 4 * 4 * 9 + 16 * 16 * 4 + 16 * 16 * 8
    assert macs(specs.bottleneck(4, True, 2, stride_in_1x1=True), (3, 8, 8, 8)) == 3 * paper
    # grouped 3x3: each output sees in_channels / groups
    assert macs(specs.bottleneck(8, False, 1, 4, 16), (1, 32, 1, 1)) == 8 * 32 + 8 * 2 * 9 + 32 * 8


def test_family_table_is_the_packages_own_numbers():
    table = family_table()
    for name, (params, giga_macs) in TORCHVISION.items():
        row = next(line for line in table.splitlines() if line.startswith(f"| `{name}` |"))
        assert f"{params:,}" in row and f"{giga_macs:.2f} G" in row
    assert all(f"`{name}`" in table for name in specs.FAMILY)
    multigpu = specs.family_spec("resnet18_multigpu", 1000, 3)  # the table's 3 channels and 1000 classes
    assert f"| `resnet18_multigpu` | residual | 2-2-2-2 | {num_trainable(multigpu, IMAGENET):,} |" in table


def test_models_registry():
    assert model_entry("resnet18").description.startswith("the chapter's ResNet-18")  # the book's: train default
    assert model_entry("resnet18").input_shape == (1, 1, 96, 96)
    assert model_entry("resnet18-imagenet").description.startswith("ResNet-18,")
    for name, described in specs.FAMILY.items():
        if name != "resnet18":
            entry = model_entry(name.replace("_", "-").upper())
            assert entry.description.startswith(described.title)
            meant = ((1, 1, 28, 28), 10) if name == "resnet18_multigpu" else (IMAGENET, 1000)  # the book's data
            assert (entry.input_shape, entry.num_classes) == meant
    assert len(MODELS) == len(specs.FAMILY) + 1


def test_block_arguments_are_validated():
    with pytest.raises(ValueError, match="planes must be a positive integer"):
        specs.bottleneck(0)
    with pytest.raises(ValueError, match="0 channels per group"):
        specs.bottleneck(4, base_width=8)
    with pytest.raises(ValueError, match="strides must be 1 or 2"):
        specs.basic(8, True, 3)
    with pytest.raises(ValueError, match="block must be one of"):
        specs.resnet_spec("wide", (1,))
    with pytest.raises(ValueError, match="unknown model 'resnet200'"):
        specs.family_spec("resnet200")


@pytest.mark.parametrize(
    "build, message",
    [
        (
            lambda: specs.resnet_spec("basic", (1,), (8,), num_classes=2**31),
            "num_classes must be a positive integer of at most 2147483647",
        ),
        (
            lambda: specs.resnet_spec("basic", (float("inf"),), (8,)),
            "each stage depth must be a positive integer, got inf",
        ),
        (
            lambda: specs.resnet_spec("basic", (1,), (8,), stem_channels=float("nan")),
            "stem_channels must be a positive integer, got nan",
        ),
        (lambda: specs.bottleneck(2**30, groups=2**20), "give .* inner and .* output channels, more than 2147483647"),
        (lambda: specs.book_resnet(((10**30, 8),)), "num_residuals must be a positive integer of at most"),
        (lambda: StemSpec(kernel=2**33 + 1), "the stem's kernel must be a positive integer of at most"),
        (lambda: specs.learning_rate(10**400), "lr must be a positive, finite number"),
        (lambda: specs.learning_rate(float("-inf")), "lr must be a positive, finite number"),
    ],
)
def test_numeric_arguments_refuse_inf_nan_and_huge(build, message):
    """Every number a description takes is checked: inf, NaN and sizes past 2**31 - 1 are ValueErrors naming
    the argument, never an OverflowError or a build that runs out of memory."""
    with pytest.raises(ValueError, match=message):
        build()


# ---------------------------------------------------------------------------------- every backend: API


def test_backend_lists_the_family(rn):
    names = ["BasicBlock", "Bottleneck", "PreActBasic", "PreActBottleneck", *specs.FAMILY]
    assert all(name in rn.__all__ for name in names)
    for name, described in specs.FAMILY.items():
        builder = getattr(rn, name)
        assert builder.__name__ == name and builder.__doc__ == described.docstring


def test_package_names_resolve_to_the_selected_backend(rn, backend_name, fresh_selection):
    resnet.set_backend(backend_name)
    assert resnet.resnet50 is rn.resnet50 and resnet.PreActBottleneck is rn.PreActBottleneck
    assert resnet.macs(rn.resnext50_32x4d(), IMAGENET) == macs(specs.family_spec("resnext50_32x4d"), IMAGENET)


def test_wrong_input_channels_is_clear(rn):
    with pytest.raises(ValueError, match="built for 3 input channels, but the input has 1"):
        resnet.output_shape(rn.resnet18(), (1, 1, 32, 32))
    model = rn.resnet18(num_classes=10, in_channels=1)
    assert resnet.output_shape(model, (2, 1, 32, 32)) == (2, 10)


def test_registry_builds_for_the_data(rn):
    model = build_model("resnet34", rn, num_classes=10, in_channels=1)  # as `resnet train --model resnet34` does
    assert model.spec == specs.family_spec("resnet34", 10, 1)
    assert build_model("resnet18", rn).spec == specs.book_resnet(specs.RESNET18_ARCH, 10)
    assert build_model("resnet18-multigpu", rn, 10, 3).spec == specs.family_spec("resnet18_multigpu", 10, 3)


def test_builders_take_their_models_defaults(rn):
    """The builders share their parameters; the multi-GPU ResNet-18's defaults are the book's 10 classes and 1
    input channel (its ``resnet18(num_classes, in_channels=1)``), the others' ImageNet's."""
    for name in specs.FAMILY:
        defaults = [p.default for p in inspect.signature(getattr(rn, name)).parameters.values()]
        assert defaults == [*((10, 1) if name == "resnet18_multigpu" else (1000, 3)), False, 0.1, "float32"], name
    assert rn.resnet18_multigpu().spec == specs.family_spec("resnet18_multigpu", 10, 1)


# ------------------------------------------------------------------- every backend: the full models


#: The deepest models (-101, -152): the same blocks as their -50 in larger numbers, so their training pass and
#: weights file prove nothing the -50's do not; they are built and run in inference mode only, which keeps each
#: backend's session minutes shorter (building, one backward pass and a 170-240 MB file each).
DEEP = [name for name, model in specs.FAMILY.items() if sum(model.depths) > 16]


def _builds_with_its_parameters_and_summary(rn, name: str):
    """The model built with its defaults (ImageNet's classes and channels, or the book's), checked at 32x32:
    parameters (torchvision's), multiply-adds and the layer summary (an inference-mode forward pass)."""
    model, described = getattr(rn, name)(), specs.FAMILY[name]
    spec, tiny = model.spec, (1, described.in_channels, 32, 32)
    expected = TORCHVISION[name][0] if name in TORCHVISION else num_trainable(spec, tiny)
    assert resnet.num_params(model, tiny) == expected
    assert resnet.macs(model, described.input_shape) == macs(spec, described.input_shape)
    lines = resnet.summary_lines(model, tiny)
    assert [(line.split()[0], line.split("output shape: ")[1]) for line in lines] == [
        (part, str(shape)) for part, shape in model_part_shapes(spec, tiny)
    ]
    return model, spec, tiny, described.num_classes


@pytest.mark.parametrize("name", DEEP)
def test_deep_model_builds_and_runs(rn, name):
    """The -101s and -152s: parameters, multiply-adds and the layer summary, as for the others."""
    _builds_with_its_parameters_and_summary(rn, name)


@pytest.mark.parametrize("name", [name for name in specs.FAMILY if name not in DEEP])
def test_model_builds_runs_and_round_trips(rn, name, tmp_path):
    """Parameters, multiply-adds and the layer summary (as above), then a training-mode forward and backward
    pass, and a neutral weights file loaded into a fresh model."""
    model, spec, tiny, classes = _builds_with_its_parameters_and_summary(rn, name)
    # a batch of 2: in training mode, BN over a single value (the last stage is 1x1) passes no gradient back
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, *tiny[1:])).astype(np.float32)
    output, grads = rn.vjp(model, x, rng.standard_normal((2, classes)).astype(np.float32))
    assert output.shape == (2, classes) and np.isfinite(output).all()
    trainable = {n: info.shape for n, info in tensor_infos(spec, tiny).items() if info.trainable}
    assert {n: g.shape for n, g in grads.items()} == trainable
    assert all(np.isfinite(g).all() for g in grads.values())
    assert np.abs(grads["b1.conv.weight"]).max() > 0  # the gradient reaches the stem

    resnet.save_weights(model, tmp_path / f"{name}.safetensors")
    fresh = resnet.load_weights(getattr(rn, name)(), tmp_path / f"{name}.safetensors")
    before, after = rn.get_arrays(model), rn.get_arrays(fresh)
    assert sorted(after) == sorted(tensor_infos(spec, tiny))
    assert all(np.array_equal(before[n], after[n]) for n in before)


# ------------------------------------------------------------ every backend: the book's signatures (issue 14)

SMALL_ARCH = ((1, 64), (1, 32))
#: The book's ResNet-18 summary at (1, 1, 96, 96): each part's output shape, NCHW.
BOOK_SUMMARY = [
    ("b1", (1, 64, 24, 24)),
    ("b2", (1, 64, 24, 24)),
    ("b3", (1, 128, 12, 12)),
    ("b4", (1, 256, 6, 6)),
    ("b5", (1, 512, 3, 3)),
    ("last", (1, 10)),
]


def _seeded(model, rn, x_shape, seed=3):
    """``model`` built for ``x_shape`` with the reference initializer's seeded weights (the same in every model)."""
    rn.build(model, x_shape)
    rn.set_arrays(model, initial_weights(model.spec, x_shape, seed=seed))
    return model


def test_constructors_take_the_books_positional_order(rn):
    """``ResNet(arch, lr=0.1, num_classes=10)`` and ``ResNet18(lr=0.1, num_classes=10)``, as the chapter's."""
    model = rn.ResNet18(0.01)
    assert model.lr == 0.01 and isinstance(model.lr, float)
    assert model.spec == specs.book_resnet(specs.RESNET18_ARCH, 10)
    assert rn.ResNet18(0.01, 3).spec == specs.book_resnet(specs.RESNET18_ARCH, 3)
    model = rn.ResNet(SMALL_ARCH, 0.05, 3)
    assert model.lr == 0.05 and model.spec == specs.book_resnet(SMALL_ARCH, 3)
    assert rn.ResNet(SMALL_ARCH).lr == rn.ResNet18().lr == specs.DEFAULT_LR == 0.1
    assert resnet.output_shape(rn.ResNet(SMALL_ARCH, 0.05, 3), (2, 1, 16, 16)) == (2, 3)


def test_constructor_keywords_still_work(rn):
    model = rn.ResNet18(lr=0.01, num_classes=3, dtype="float32")
    assert (model.lr, model.spec, rn.dtype_of(model)) == (0.01, specs.book_resnet(specs.RESNET18_ARCH, 3), "float32")
    model = rn.ResNet(arch=SMALL_ARCH, lr=0.2, num_classes=4)
    assert model.lr == 0.2 and model.spec == specs.book_resnet(SMALL_ARCH, 4)
    spec = specs.family_spec("resnet18", 5, 1)
    assert rn.ResNet(spec=spec).spec == spec and rn.ResNet(spec=spec, lr=0.3).lr == 0.3
    assert rn.resnet18(num_classes=5, in_channels=1, lr=0.02).lr == 0.02
    for bad in (0, -0.1, float("nan"), "0.1", True):
        with pytest.raises(ValueError, match="lr must be a positive, finite number"):
            rn.ResNet18(lr=bad)


def test_resnet18_is_a_resnet_class(rn):
    assert isinstance(rn.ResNet18, type) and issubclass(rn.ResNet18, rn.ResNet)
    assert isinstance(rn.ResNet18(), rn.ResNet) and isinstance(rn.resnet50(), rn.ResNet)


def _books_resnet18(rn, backend_name):
    """The chapter's own ResNet18 cell, subclassing this package's ResNet: fields in the JAX tab, ``__init__`` in
    the others."""
    if backend_name == "jax":

        class ResNet18(rn.ResNet):
            arch: tuple = ((2, 64), (2, 128), (2, 256), (2, 512))
            lr: float = 0.1
            num_classes: int = 10

    else:

        class ResNet18(rn.ResNet):
            def __init__(self, lr=0.1, num_classes=10):
                super().__init__(((2, 64), (2, 128), (2, 256), (2, 512)), lr, num_classes)

    return ResNet18


def test_subclasses_work_through_the_common_api(rn, backend_name):
    """A user's subclass of ResNet18, and the chapter's own ``class ResNet18(ResNet)``: built, run, summarized and
    trained through the common API, with their own learning rate."""

    class Mine(rn.ResNet18):
        """A user's ResNet-18."""

    book = _books_resnet18(rn, backend_name)
    for model in (Mine(0.05, 3), book(lr=0.05, num_classes=3)):
        assert isinstance(model, rn.ResNet) and model.lr == 0.05
        assert model.spec == specs.book_resnet(specs.RESNET18_ARCH, 3)
        assert resnet.output_shape(model, (2, 1, 32, 32)) == (2, 3)
        assert resnet.num_params(model, (2, 1, 32, 32)) == num_trainable(model.spec, (2, 1, 32, 32))
        assert [line.split()[0] for line in resnet.summary_lines(model, (1, 1, 32, 32))] == list(model.spec.part_names)
        x, labels = np.random.default_rng(0).random((2, 1, 32, 32), dtype=np.float32), np.array([0, 2])
        assert np.isfinite(rn.make_train_step(model)(x, labels))
    assert book().lr == 0.1 and book(lr=0.01).lr == 0.01


def test_train_step_without_lr_uses_the_models(rn):
    """``make_train_step(model)`` takes one SGD step with ``model.lr``: the same step as an explicit lr."""
    x_shape = (4, 1, 16, 16)
    rng = np.random.default_rng(1)
    x, labels = rng.random(x_shape, dtype=np.float32), rng.integers(0, 3, 4)
    own, explicit, default = (_seeded(rn.ResNet(SMALL_ARCH, lr, 3), rn, x_shape) for lr in (0.05, 0.1, 0.1))
    own_loss = rn.make_train_step(own)(x, labels)
    explicit_loss = rn.make_train_step(explicit, 0.05)(x, labels)  # the argument wins over the model's 0.1
    rn.make_train_step(default)(x, labels)
    assert own_loss == pytest.approx(explicit_loss, rel=1e-6)
    after_own, after_explicit, after_default = rn.get_arrays(own), rn.get_arrays(explicit), rn.get_arrays(default)
    for name, value in after_own.items():
        np.testing.assert_allclose(value, after_explicit[name], rtol=1e-5, atol=1e-7, err_msg=name)
    assert not np.allclose(after_own["last.fc.weight"], after_default["last.fc.weight"])  # lr 0.1 stepped further
    with pytest.raises(ValueError, match="has no learning rate of its own"):
        rn.make_train_step(rn.Residual(8))


def test_layer_summary_method_speaks_the_frameworks_layout(rn, backend_name, capsys):
    """The book's ``model.layer_summary(X_shape)``: NHWC in TensorFlow and JAX, as their tabs write
    ``(1, 96, 96, 1)``; NCHW in PyTorch and MXNet."""
    layout = {"torch": "NCHW", "mxnet": "NCHW", "tensorflow": "NHWC", "jax": "NHWC"}[backend_name]
    assert rn.LAYOUT == layout

    def native(shape):
        return (shape[0], shape[2], shape[3], shape[1]) if layout == "NHWC" and len(shape) == 4 else shape

    model = rn.ResNet18(training=False) if backend_name == "jax" else rn.ResNet18()  # each tab's own call
    assert model.layer_summary(native((1, 1, 96, 96))) is None
    lines = capsys.readouterr().out.splitlines()
    assert [(line.split()[0], line.split("output shape: ")[1]) for line in lines] == [
        (part, str(native(shape))) for part, shape in BOOK_SUMMARY
    ]


if "jax" in INSTALLED:  # jax.jit's cache; the other backends compile per step function or per model

    def test_jax_compiles_once_per_architecture_and_batch_shape():
        """Models of one architecture share the jitted step and predict function, whatever their lr; a new
        batch shape compiles once more."""
        from resnet.backends import jax as rj
        from resnet.backends.jax import train

        arch, x_shape = ((1, 64), (1, 24)), (4, 1, 16, 16)  # an architecture no other test compiles
        rng = np.random.default_rng(2)
        x, labels = rng.random(x_shape, dtype=np.float32), rng.integers(0, 5, 4)
        steps, predictions = train._sgd_step._cache_size(), train._inference._cache_size()
        for model in (rj.ResNet(arch, 0.01, 5), rj.ResNet(arch, 0.05, 5), rj.ResNet(arch, num_classes=5)):
            step = rj.make_train_step(model)
            step(x, labels)
            step(x, labels)
            rj.make_predict(model)(x)
        assert (train._sgd_step._cache_size() - steps, train._inference._cache_size() - predictions) == (1, 1)
        rj.make_train_step(rj.ResNet(arch, 0.2, 5))(x[:2], labels[:2])  # a smaller last batch
        assert train._sgd_step._cache_size() - steps == 2


if "torch" in INSTALLED:  # the chapter calls apply_init in its PyTorch tab only

    def test_torch_apply_init_builds_then_applies_the_init_function():
        """The book's ``model.apply_init([X], d2l.init_cnn)``: one pass over the inputs creates the lazy weights
        (inference mode: BatchNorm's statistics stay at their initial values), then ``init`` reaches every
        module, the lazy layers already their built classes (``nn.Conv2d``, ``nn.Linear``), as the book's
        ``init_cnn`` tests for."""
        import torch
        from resnet.backends import torch as rt
        from torch import nn

        model = rt.ResNet(SMALL_ARCH, 0.05, 3)
        initialized = []

        def init_cnn(module):  # the book's d2l.init_cnn, with constants so that the test can see them
            if type(module) in (nn.Linear, nn.Conv2d):
                nn.init.constant_(module.weight, 0.01)
                nn.init.zeros_(module.bias)
                initialized.append(module)

        assert model.apply_init([torch.zeros(2, 1, 16, 16)], init_cnn) is None
        assert rt.is_built(model) and model.training  # the model's mode is left as it was
        arrays = rt.get_arrays(model)
        layers = [name for name in arrays if name.endswith(".weight") and arrays[name].ndim > 1]
        assert len(initialized) == len(layers) == 7  # the stem, 2 + 3 convolutions in the blocks, the dense layer
        assert all(np.all(arrays[name] == 0.01) for name in layers)
        assert all(np.all(arrays[name] == (0 if name.endswith("mean") else 1)) for name in arrays if "running" in name)
        plain = rt.ResNet18()
        plain.apply_init([torch.zeros(1, 1, 32, 32)])  # no init: only built
        assert rt.is_built(plain)
