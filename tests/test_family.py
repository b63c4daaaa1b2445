"""The whole ResNet family of the chapter's exercises, in every backend.

ResNet-18/34/50/101/152, their pre-activation versions and ResNeXt-50/101, in torchvision's convention: the
descriptions (depths, widths, stride placement, pre-activation), parameter counts equal to torchvision's and
multiply-adds its published figures, the model registry, each backend's builders, and every model building,
running forward and backward, and saving and loading neutral weights in every backend. The family's numbers
against the reference are in test_numerics.py, its weights files in test_weights.py, its commands in test_cli.py.
"""

from __future__ import annotations

import numpy as np
import pytest

import resnet
from resnet import specs
from resnet.models import MODELS, build_model, model_entry
from resnet.shapes import family_table, macs, model_part_shapes, num_trainable, tensor_infos

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
TINY = (1, 3, 32, 32)


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


def test_preact_models_are_resnet_v2():
    spec = specs.family_spec("preact_resnet50")
    assert spec.head.preact and list(spec.head.layers(2048)) == ["bn", "fc"]  # final BN (and ReLU) before pooling
    layers = dict(spec.stages)["b3"][0].layers(256)
    # BN first; a bare projection
    assert list(layers) == ["bn1", "conv1", "bn2", "conv2", "bn3", "conv3", "downsample.conv"]
    assert layers["bn1"].num_features == 256  # normalizes the block's input
    assert not spec.stem.conv_bias and dict(spec.stages)["b3"][0].preact


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


def test_models_registry():
    assert model_entry("resnet18").description.startswith("the chapter's ResNet-18")  # the book's: train default
    assert model_entry("resnet18").input_shape == (1, 1, 96, 96)
    assert model_entry("resnet18-imagenet").description.startswith("ResNet-18,")
    for name, described in specs.FAMILY.items():
        if name != "resnet18":
            entry = model_entry(name.replace("_", "-").upper())
            assert entry.description.startswith(described.title) and entry.input_shape == IMAGENET
            assert entry.num_classes == 1000
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


# ------------------------------------------------------------------- every backend: the full models


@pytest.mark.parametrize("name", list(specs.FAMILY))
def test_model_builds_runs_and_round_trips(rn, name, tmp_path):
    """At 32x32: parameters (torchvision's), multiply-adds, the layer summary (an inference-mode forward pass),
    a training-mode forward and backward pass, and a neutral weights file loaded into a fresh model."""
    model = getattr(rn, name)()
    spec = model.spec
    expected = TORCHVISION[name][0] if name in TORCHVISION else num_trainable(spec, TINY)
    assert resnet.num_params(model, TINY) == expected
    assert resnet.macs(model, IMAGENET) == macs(spec, IMAGENET)
    lines = resnet.summary_lines(model, TINY)
    assert [(line.split()[0], line.split("output shape: ")[1]) for line in lines] == [
        (part, str(shape)) for part, shape in model_part_shapes(spec, TINY)
    ]
    # a batch of 2: in training mode, BN over a single value (the last stage is 1x1) passes no gradient back
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    output, grads = rn.vjp(model, x, rng.standard_normal((2, 1000)).astype(np.float32))
    assert output.shape == (2, 1000) and np.isfinite(output).all()
    trainable = {n: info.shape for n, info in tensor_infos(spec, TINY).items() if info.trainable}
    assert {n: g.shape for n, g in grads.items()} == trainable
    assert all(np.isfinite(g).all() for g in grads.values())
    assert np.abs(grads["b1.conv.weight"]).max() > 0  # the gradient reaches the stem

    resnet.save_weights(model, tmp_path / f"{name}.safetensors")
    fresh = resnet.load_weights(getattr(rn, name)(), tmp_path / f"{name}.safetensors")
    before, after = rn.get_arrays(model), rn.get_arrays(fresh)
    assert sorted(after) == sorted(tensor_infos(spec, TINY))
    assert all(np.array_equal(before[n], after[n]) for n in before)
