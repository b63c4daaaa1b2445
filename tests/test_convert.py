"""Published checkpoints (torchvision, timm, transformers) to neutral weights files and back (resnet.checkpoints).

The torchvision- and timm-named state dicts are written here from random NumPy arrays, their names laid out as
those libraries' modules name them (written from their module structure, not from the package's tables), so that
a wrong table fails. Converted files load into every backend and give the NumPy reference's logits. Where
transformers is installed, its own ResNetForImageClassification is the other side of the comparison.
"""

from __future__ import annotations

import functools
import importlib.util
import sys

import numpy as np
import pytest
from helpers import assert_close, needs_library

import resnet
from resnet.checkpoints import (
    CheckpointMismatchError,
    architecture_spec,
    convert,
    export_weights,
    from_canonical,
    import_weights,
    to_canonical,
)
from resnet.checkpoints.readers import read_checkpoint
from resnet.reference import Reference, reference_weights
from resnet.weights import read_weights

HAS_TORCH = importlib.util.find_spec("torch") is not None
INPUT = (2, 3, 32, 32)
CLASSES = 7

# ------------------------------------------------------------------------- checkpoints as the libraries name them


def _bn(state: dict, weights: dict, ours: str, theirs: str) -> None:
    for kind in ("weight", "bias", "running_mean", "running_var"):
        state[f"{theirs}.{kind}"] = weights[f"{ours}.{kind}"]
    state[f"{theirs}.num_batches_tracked"] = np.array(17, np.int64)  # PyTorch's BatchNorm step counter


def _layout(spec) -> tuple[list[int], bool]:
    return [len(blocks) for _, blocks in spec.stages], spec.stages[0][1][0].kind.endswith("bottleneck")


def torchvision_state(weights: dict, spec) -> dict[str, np.ndarray]:
    """A torchvision (and timm ResNet) state dict: conv1/bn1, layer1..4 of blocks with conv1/bn1..., a
    ``downsample`` Sequential (0: conv, 1: BN) where torchvision makes one (stride 2, or a channel change:
    the first block of every bottleneck stage), fc."""
    depths, bottleneck = _layout(spec)
    state = {"conv1.weight": weights["b1.conv.weight"]}
    _bn(state, weights, "b1.bn", "bn1")
    for layer, depth in enumerate(depths, start=1):
        for i in range(depth):
            theirs, ours = f"layer{layer}.{i}", f"b{layer + 1}.{i}"
            for j in range(1, 4 if bottleneck else 3):
                state[f"{theirs}.conv{j}.weight"] = weights[f"{ours}.conv{j}.weight"]
                _bn(state, weights, f"{ours}.bn{j}", f"{theirs}.bn{j}")
            if i == 0 and (layer > 1 or bottleneck):
                state[f"{theirs}.downsample.0.weight"] = weights[f"{ours}.downsample.conv.weight"]
                _bn(state, weights, f"{ours}.downsample.bn", f"{theirs}.downsample.1")
    state["fc.weight"], state["fc.bias"] = weights["last.fc.weight"], weights["last.fc.bias"]
    return state


def timm_v2_state(weights: dict, spec) -> dict[str, np.ndarray]:
    """A timm ResNetV2 (pre-activation, BatchNorm) state dict: stem.conv and no stem norm, stages.S.blocks.I
    with norm1/conv1..., a bare ``downsample.conv`` in each stage's first block (a basic model's first stage
    has none: same stride, same channels), the final ``norm`` and a 1x1-convolution head ``head.fc``."""
    depths, bottleneck = _layout(spec)
    state = {"stem.conv.weight": weights["b1.conv.weight"]}
    for s, depth in enumerate(depths):
        for i in range(depth):
            theirs, ours = f"stages.{s}.blocks.{i}", f"b{s + 2}.{i}"
            for j in range(1, 4 if bottleneck else 3):
                _bn(state, weights, f"{ours}.bn{j}", f"{theirs}.norm{j}")
                state[f"{theirs}.conv{j}.weight"] = weights[f"{ours}.conv{j}.weight"]
            if i == 0 and (s > 0 or bottleneck):
                state[f"{theirs}.downsample.conv.weight"] = weights[f"{ours}.downsample.conv.weight"]
    _bn(state, weights, "last.bn", "norm")
    state["head.fc.weight"] = weights["last.fc.weight"][:, :, None, None]
    state["head.fc.bias"] = weights["last.fc.bias"]
    return state


def library_state(fmt: str, weights: dict, spec) -> dict[str, np.ndarray]:
    """The state dict ``fmt``'s library would save for ``spec`` with ``weights``."""
    return timm_v2_state(weights, spec) if fmt == "timm" and spec.head.preact else torchvision_state(weights, spec)


def save_state(state: dict[str, np.ndarray], path) -> None:
    """A state dict file: safetensors, or ``torch.save`` of tensors for a PyTorch suffix."""
    if path.suffix == ".safetensors":
        from safetensors.numpy import save_file

        save_file(state, str(path))
    else:
        import torch

        torch.save({name: torch.from_numpy(np.array(value)) for name, value in state.items()}, str(path))


@functools.cache
def reference_case(name: str) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Canonical weights, an input and the reference's logits for architecture ``name`` with CLASSES classes;
    the dense layer scaled to make the logits of order 1, where absolute tolerances mean something."""
    spec = architecture_spec(name, CLASSES)
    weights = reference_weights(spec, INPUT, seed=11)
    x = np.random.default_rng(4).standard_normal(INPUT).astype(np.float32)
    bias = weights["last.fc.bias"].astype(np.float64)
    logits = Reference(spec, weights).forward(x) - bias  # linear in the dense kernel: scaled with it
    scale = np.float32(2.0 ** -np.ceil(np.log2(np.abs(logits).max())))  # a power of 2: the scaled kernel is exact
    weights["last.fc.weight"] = weights["last.fc.weight"] * scale
    return weights, x, logits * np.float64(scale) + bias


# --------------------------------------------------------------------------------- converted, loaded, compared

BACKEND_CASES = [
    ("torchvision", "resnet18", "float64"),
    ("torchvision", "resnet50", "float32"),
    ("timm", "resnet18", "float32"),
    ("timm", "preact_resnet18", "float64"),
    ("timm", "preact_resnet50", "float32"),
]


@pytest.mark.parametrize(("fmt", "name", "dtype"), BACKEND_CASES, ids=["-".join(case) for case in BACKEND_CASES])
def test_converted_checkpoint_gives_reference_logits(rn, tmp_path, fmt, name, dtype):
    weights, x, expected = reference_case(name)
    spec = architecture_spec(name, CLASSES)
    wide = dtype == "float64"
    state = library_state(fmt, {k: v.astype(np.float64) if wide else v for k, v in weights.items()}, spec)
    save_state(state, tmp_path / "published.safetensors")
    convert(tmp_path / "published.safetensors", fmt, name, tmp_path / "ours.safetensors")
    converted = read_weights(tmp_path / "ours.safetensors")[0]
    assert sorted(converted) == sorted(weights)
    if HAS_TORCH:  # the same checkpoint as a PyTorch file converts to the same bits
        save_state(state, tmp_path / "published.pth")
        convert(tmp_path / "published.pth", fmt, name, tmp_path / "from_pth.safetensors")
        again = read_weights(tmp_path / "from_pth.safetensors")[0]
        assert all(np.array_equal(again[k], converted[k]) and again[k].dtype == converted[k].dtype for k in converted)
    model = resnet.load_weights(rn.ResNet(spec=spec, dtype=dtype), tmp_path / "ours.safetensors")
    atol = 1e-10 if wide else 1e-4
    assert_close(resnet.forward(model, x), expected, atol, f"{fmt} {name} ({dtype}) logits in {rn.NAME}")
    # training mode (BatchNorm on the batch's statistics) against the reference's, in float64: BatchNorm over a
    # batch of 2 at 1x1 (the last stage) amplifies rounding about 1e7-fold (measured in torch: a float32 resnet50
    # 1.7e-3 off the reference there, a float64 one 6.5e-10, a float64 preact_resnet50 1.3e-8), so the file loads
    # into float64, held to 1e-7
    training = Reference(spec, converted).forward(x.astype(np.float64), training=True)
    wide_model = resnet.load_weights(rn.ResNet(spec=spec, dtype="float64"), tmp_path / "ours.safetensors")
    got = resnet.forward(wide_model, x.astype(np.float64), training=True)
    assert_close(got, training, 1e-7, f"{fmt} {name} training-mode logits in {rn.NAME}")


# ----------------------------------------------------------------------------------- round trips (no framework)

ROUND_TRIPS = [
    ("torchvision", "resnet18"),
    ("torchvision", "resnet50"),
    ("torchvision", "resnext50_32x4d"),
    ("torchvision", "wide_resnet50_2"),
    ("timm", "resnet34"),
    ("timm", "preact_resnet18"),
    ("timm", "preact_resnet50"),
    ("transformers", "resnet18"),
    ("transformers", "resnet50"),
]


def distinct_weights(spec) -> dict[str, np.ndarray]:
    """Canonical arrays whose every element differs from the others in its tensor (a transposition shows)."""
    from resnet.shapes import tensor_infos

    infos = tensor_infos(spec, INPUT)
    return {name: np.arange(np.prod(info.shape), dtype=np.float32).reshape(info.shape) for name, info in infos.items()}


@pytest.mark.parametrize(("fmt", "name"), ROUND_TRIPS, ids=["-".join(case) for case in ROUND_TRIPS])
def test_round_trip_through_a_format_is_bit_identical(fmt, name):
    spec = architecture_spec(name, CLASSES)
    weights = distinct_weights(spec)
    published = from_canonical(weights, fmt, spec)
    back = to_canonical(published, fmt, spec)
    assert sorted(back) == sorted(weights)
    for key, value in weights.items():
        assert back[key].dtype == value.dtype and np.array_equal(back[key], value), key


def test_published_names_are_the_libraries(tmp_path):
    """The tables give exactly the names torchvision's and timm's modules have (as written above)."""
    for fmt, name in [("torchvision", "resnet50"), ("timm", "preact_resnet34"), ("timm", "resnext50_32x4d")]:
        spec = architecture_spec(name, CLASSES)
        weights = distinct_weights(spec)
        ours = {k for k in from_canonical(weights, fmt, spec) if not k.endswith("num_batches_tracked")}
        theirs = {k for k in library_state(fmt, weights, spec) if not k.endswith("num_batches_tracked")}
        assert ours == theirs, (
            f"{fmt} {name}: only ours {sorted(ours - theirs)[:5]}, only theirs {sorted(theirs - ours)[:5]}"
        )


@pytest.mark.parametrize("fmt", ["torchvision", "timm"])
def test_export_then_convert_back_is_bit_identical(tmp_path, fmt):
    spec = architecture_spec("resnet18" if fmt == "torchvision" else "preact_resnet18", CLASSES)
    weights = reference_weights(spec, INPUT, seed=2)
    from resnet.weights import MODEL_KEY, write_weights

    write_weights(weights, tmp_path / "ours.safetensors", {MODEL_KEY: repr(spec)})
    assert export_weights(tmp_path / "ours.safetensors", fmt, tmp_path / "theirs.safetensors") == spec
    state = read_checkpoint(tmp_path / "theirs.safetensors")[0]
    counter = state["layer1.0.bn1.num_batches_tracked" if fmt == "torchvision" else "norm.num_batches_tracked"]
    assert counter.dtype == np.int64 and counter.shape == (), "PyTorch's BatchNorm step counter is a 0-d int64"
    back, back_spec = import_weights(tmp_path / "theirs.safetensors", fmt, spec)
    assert back_spec == spec and all(np.array_equal(back[k], weights[k]) for k in weights)


# ------------------------------------------------------------------------------------------------------ errors


def _torchvision_file(tmp_path, name: str, edit=None):
    spec = architecture_spec(name, CLASSES)
    state = torchvision_state(reference_case("resnet18")[0] if name == "resnet18" else distinct_weights(spec), spec)
    if edit:
        edit(state)
    save_state(state, tmp_path / "published.safetensors")
    return tmp_path / "published.safetensors"


def test_unknown_tensors_are_listed(tmp_path):
    path = _torchvision_file(tmp_path, "resnet18", lambda s: s.update({"layer1.0.se.fc.weight": np.zeros((4, 4))}))
    with pytest.raises(CheckpointMismatchError, match=r"unknown \(1\): layer1\.0\.se\.fc\.weight"):
        import_weights(path, "torchvision", "resnet18")


def test_missing_tensors_are_listed(tmp_path):
    path = _torchvision_file(tmp_path, "resnet18", lambda s: s.pop("layer3.1.bn2.running_var"))
    with pytest.raises(CheckpointMismatchError, match=r"missing \(1\): layer3\.1\.bn2\.running_var"):
        import_weights(path, "torchvision", "resnet18")


def test_misshapen_tensors_are_listed_with_both_shapes(tmp_path):
    path = _torchvision_file(tmp_path, "resnet18", lambda s: s.update({"bn1.weight": np.ones(32, np.float32)}))
    with pytest.raises(
        CheckpointMismatchError, match=r"misshapen \(1\): bn1\.weight: checkpoint \(32,\), model \(64,\)"
    ):
        import_weights(path, "torchvision", "resnet18")


@pytest.mark.parametrize("asked", ["resnet18", "resnet50"])
def test_wrong_architecture_names_the_one_it_looks_like(tmp_path, asked):
    path = _torchvision_file(tmp_path, "resnet34")
    with pytest.raises(CheckpointMismatchError, match=rf"looks like resnet34 \({CLASSES} classes, 3 input channels\)"):
        import_weights(path, "torchvision", asked)


def test_checkpoint_fitting_no_model_describes_its_stages(tmp_path):
    def shrink(state):  # keep one block per stage: stage depths (1, 1, 1, 1)
        for key in [k for k in state if k.startswith("layer") and k.split(".")[1] != "0"]:
            del state[key]

    path = _torchvision_file(tmp_path, "resnet18", shrink)
    with pytest.raises(CheckpointMismatchError, match=r"stage depths \(1, 1, 1, 1\) of basic blocks"):
        import_weights(path, "torchvision", "resnet18")


def test_wrong_format_fits_nothing(tmp_path):
    path = _torchvision_file(tmp_path, "resnet18")
    with pytest.raises(CheckpointMismatchError, match="as a transformers checkpoint"):
        import_weights(path, "transformers", "resnet18")


def test_pth_without_torch_says_what_to_do(tmp_path, monkeypatch):
    (tmp_path / "model.pth").write_bytes(b"PK\x03\x04 not read")
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    with pytest.raises(ImportError, match=r"pip install torch.*\.safetensors"):
        import_weights(tmp_path / "model.pth", "torchvision", "resnet18")


def test_unknown_format_and_model_are_listed(tmp_path):
    path = _torchvision_file(tmp_path, "resnet18")
    with pytest.raises(ValueError, match="known formats: torchvision, timm, transformers"):
        import_weights(path, "caffe", "resnet18")
    with pytest.raises(ValueError, match="unknown model 'resnet19'.*resnet18"):
        import_weights(path, "torchvision", "resnet19")


def test_export_of_a_v1_model_to_torchvision_is_refused(tmp_path):
    """torchvision's bottlenecks stride the 3x3: a stride_in_1x1 model exported there would compute another."""
    from resnet.weights import MODEL_KEY, write_weights

    spec = architecture_spec("resnet50", CLASSES, stride_in_1x1=True)
    write_weights(distinct_weights(spec), tmp_path / "ours.safetensors", {MODEL_KEY: repr(spec)})
    for fmt in ("torchvision", "timm"):
        with pytest.raises(CheckpointMismatchError, match=r"stride_in_1x1=True.*always stride the 3x3"):
            export_weights(tmp_path / "ours.safetensors", fmt, tmp_path / f"{fmt}.safetensors")
        assert not (tmp_path / f"{fmt}.safetensors").exists()


def test_converting_safetensors_imports_no_framework(tmp_path):
    import subprocess

    path = _torchvision_file(tmp_path, "resnet18")
    code = (
        "import sys; from resnet.checkpoints import convert, export_weights; "
        f"convert({str(path)!r}, 'torchvision', 'resnet18', {str(tmp_path / 'o.safetensors')!r}); "
        f"export_weights({str(tmp_path / 'o.safetensors')!r}, 'transformers', {str(tmp_path / 'hf')!r}); "
        "print(sorted({'torch', 'tensorflow', 'jax', 'mxnet', 'keras'} & set(sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


def test_cli_converts_both_ways(tmp_path, capsys):
    from resnet.cli import main

    path = _torchvision_file(tmp_path, "resnet18")
    out = tmp_path / "ours.safetensors"
    assert main(["convert", str(path), "--from", "torchvision", "--model", "resnet18", "-o", str(out)]) == 0
    assert "resnet.load_weights" in capsys.readouterr().out
    assert main(["convert", str(out), "--to", "timm", "-o", str(tmp_path / "timm.safetensors")]) == 0
    assert read_checkpoint(tmp_path / "timm.safetensors")[0].keys() == read_checkpoint(path)[0].keys()
    assert main(["convert", str(path), "--from", "torchvision", "--model", "resnet50", "-o", str(out)]) == 2
    assert "looks like resnet18" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ transformers

needs_transformers = needs_library("torch", "transformers", install="pip install -e '.[hub]'")


def hf_model(layer_type: str, downsample_in_bottleneck: bool = False):
    """A small ResNetForImageClassification with random weights and BatchNorm statistics, in eval mode."""
    import torch
    from transformers import ResNetConfig, ResNetForImageClassification

    sizes = [8, 16] if layer_type == "basic" else [16, 32]
    config = ResNetConfig(
        embedding_size=8,
        hidden_sizes=sizes,
        depths=[1, 2],
        layer_type=layer_type,
        num_labels=5,
        downsample_in_bottleneck=downsample_in_bottleneck,
    )
    torch.manual_seed(0)
    model = ResNetForImageClassification(config).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.8, 1.2)
                module.bias.normal_(0.0, 0.1)
                module.running_mean.normal_(0.0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model


def hf_logits(model, x: np.ndarray, training: bool = False) -> np.ndarray:
    """The model's logits in inference mode, or in training mode (BatchNorm on the batch; the model's running
    statistics are left as they were)."""
    import copy

    import torch

    with torch.no_grad():
        if not training:
            return model(torch.from_numpy(x)).logits.numpy()
        return copy.deepcopy(model).train()(torch.from_numpy(x)).logits.numpy()


@needs_transformers
@pytest.mark.parametrize(("layer_type", "paper"), [("basic", False), ("bottleneck", False), ("bottleneck", True)])
def test_transformers_checkpoint_gives_its_logits(rn, tmp_path, layer_type, paper):
    model = hf_model(layer_type, paper)
    model.save_pretrained(tmp_path / "hf")
    spec = convert(tmp_path / "hf", "transformers", None, tmp_path / "ours.safetensors")
    x = np.random.default_rng(1).standard_normal(INPUT).astype(np.float32)
    ours = resnet.load_weights(rn.ResNet(spec=spec), tmp_path / "ours.safetensors")
    assert_close(resnet.forward(ours, x), hf_logits(model, x), 1e-4, f"{layer_type} logits in {rn.NAME}")
    training = hf_logits(model, x, training=True)
    assert_close(resnet.forward(ours, x, training=True), training, 1e-4, f"{layer_type} training mode, {rn.NAME}")


@needs_transformers
def test_transformers_v1_checkpoint_loaded_as_v1_5_computes_something_else(tmp_path):
    model = hf_model("bottleneck", downsample_in_bottleneck=True)
    model.save_pretrained(tmp_path / "hf")
    x = np.random.default_rng(1).standard_normal(INPUT).astype(np.float32)
    right, spec = import_weights(tmp_path / "hf", "transformers", None)
    assert_close(Reference(spec, right).forward(x), hf_logits(model, x), 1e-4, "stride as config.json says")
    with pytest.warns(UserWarning, match="stride on the first 1x1"):
        wrong, wrong_spec = import_weights(tmp_path / "hf", "transformers", None, stride_in_1x1=False)
    error = np.abs(Reference(wrong_spec, wrong).forward(x) - hf_logits(model, x)).max()
    assert error > 1e-2, f"v1.5 strides reproduce a v1 checkpoint's logits (max error {error:.3g})"


@needs_transformers
def test_transformers_backbone_without_head_is_named(tmp_path):
    from transformers import ResNetModel

    ResNetModel(hf_model("basic").config).save_pretrained(tmp_path / "backbone")
    with pytest.raises(CheckpointMismatchError, match="no classification head: a ResNetModel"):
        import_weights(tmp_path / "backbone", "transformers", None)


@needs_transformers
@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_export_to_transformers_loads_with_from_pretrained(tmp_path, name):
    from transformers import ResNetForImageClassification

    from resnet.weights import MODEL_KEY, write_weights

    weights, x, expected = reference_case(name)
    spec = architecture_spec(name, CLASSES)
    write_weights(weights, tmp_path / "ours.safetensors", {MODEL_KEY: repr(spec)})
    export_weights(tmp_path / "ours.safetensors", "transformers", tmp_path / "hf")
    model = ResNetForImageClassification.from_pretrained(tmp_path / "hf").eval()
    assert_close(hf_logits(model, x), expected, 1e-4, f"{name} exported to transformers")
