"""Neutral weights files: canonical names and layouts, the same file in every backend (and in every pair of
backends installed together), precisions converted, atomic saves, clear mismatches, and the first release's
files loading unchanged."""

from __future__ import annotations

import dataclasses
import importlib
import io
import itertools
import json
import os
import pickle
import re
import zipfile

import numpy as np
import pytest
from helpers import (
    CHAPTER_CASES,
    FAMILY_BLOCK_CASES,
    FAMILY_CASES,
    INSTALLED,
    SMALL_FAMILY_MODELS,
    SMALL_RESNET,
    assert_close,
    case_ids,
    golden,
    section,
    tolerance,
)
from safetensors.numpy import save_file

import resnet
from resnet import specs
from resnet.reference import Reference, reference_weights
from resnet.shapes import tensor_infos
from resnet.weights import (
    NoModelDescriptionError,
    NonFiniteWeightsError,
    OldPreactLayoutError,
    WeightsFileError,
    check_finite,
    model_description,
    read_weights,
    write_weights,
)

#: The family's blocks with a projection shortcut, whose tensors torchvision names ``downsample.conv`` and
#: ``downsample.bn``.
PROJECTION_BLOCKS = FAMILY_BLOCK_CASES[1::2]


@pytest.mark.parametrize("case", [*CHAPTER_CASES, *PROJECTION_BLOCKS], ids=case_ids)
def test_saved_file_has_canonical_names_shapes_and_values(rn, case, tmp_path):
    """Golden weights -> this backend -> file: the file holds exactly the golden (canonical) tensors, with the
    projection shortcut's ``downsample.conv`` / ``downsample.bn`` names in the family's blocks."""
    arrays = golden(case)
    model = case.make(rn)
    resnet.load_weights(model, _golden_weights_file(arrays, tmp_path))
    resnet.save_weights(model, tmp_path / "saved.safetensors")
    saved, metadata = read_weights(tmp_path / "saved.safetensors")
    infos = tensor_infos(case.spec, case.input_shape)
    assert sorted(saved) == sorted(infos)
    for name, info in infos.items():
        assert saved[name].shape == info.shape and saved[name].dtype == np.float32, name
        np.testing.assert_array_equal(saved[name], arrays[f"weights/{name}"])
    assert metadata["backend"] == rn.NAME
    if case in PROJECTION_BLOCKS:
        assert any(name.startswith("downsample.conv.") for name in saved)


def _golden_weights_file(arrays, directory) -> str:
    """Write a case's golden weights as a neutral weights file (as any backend would)."""
    path = os.path.join(directory, "golden.safetensors")
    write_weights(section(arrays, "weights"), path, {"backend": "reference"})
    return path


def test_loaded_file_reproduces_reference_outputs(rn, tmp_path):
    arrays = golden(SMALL_RESNET)
    model = SMALL_RESNET.make(rn)  # not built: loading builds it
    resnet.load_weights(model, _golden_weights_file(arrays, tmp_path))
    np.testing.assert_allclose(resnet.forward(model, arrays["input"]), arrays["inference"], atol=1e-4)


def test_save_unbuilt_model_is_clear(rn, tmp_path):
    with pytest.raises(ValueError, match="no weights yet.*resnet.output_shape"):
        resnet.save_weights(rn.Residual(3), tmp_path / "w.safetensors")


def test_mismatch_lists_missing_unexpected_and_misshapen(rn, tmp_path):
    model = rn.Residual(6, use_1x1conv=True, strides=2)
    resnet.output_shape(model, (1, 3, 6, 6))
    before = rn.get_arrays(model)
    tensors = {name: value.copy() for name, value in before.items() if not name.startswith("conv3.")}
    tensors["conv1.weight"] = np.zeros((6, 4, 3, 3), np.float32)
    tensors["extra.weight"] = np.zeros(3, np.float32)
    path = tmp_path / "bad.safetensors"
    write_weights(tensors, path, {})
    with pytest.raises(resnet.WeightsMismatchError) as caught:
        resnet.load_weights(model, path)
    message = str(caught.value)
    assert "missing (2): conv3.weight, conv3.bias" in message
    assert "unexpected (1): extra.weight" in message
    assert "misshapen (1): conv1.weight: file (6, 4, 3, 3) float32, model (6, 3, 3, 3) float32" in message
    after = rn.get_arrays(model)  # nothing was assigned
    assert all(np.array_equal(after[name], before[name]) for name in before)


@pytest.mark.parametrize("dtype", ["float16", "int64", "bool", "complex64"])
@pytest.mark.parametrize("built", [True, False], ids=["built", "unbuilt"])
def test_wrong_dtype_is_refused_naming_the_tensors(rn, tmp_path, dtype, built):
    """Only float32 and float64 load (converted to the model's precision): every other dtype is refused, naming
    each tensor and its dtype, and the model is left as it was."""
    source = rn.Residual(3)
    resnet.output_shape(source, (1, 3, 4, 4))
    arrays = rn.get_arrays(source)
    path = tmp_path / f"{dtype}.safetensors"
    odd = {"conv1.weight", "bn2.running_var"}
    save_file(
        {k: v.astype(dtype) if k in odd else v for k, v in arrays.items()},
        str(path),
        metadata={"format": "resnet.neutral/1"},
    )
    model = rn.Residual(3)
    if built:
        resnet.output_shape(model, (1, 3, 4, 4))
        before = rn.get_arrays(model)
    with pytest.raises(resnet.WeightsMismatchError) as caught:
        resnet.load_weights(model, path)
    message = str(caught.value)
    assert f"wrong dtype (2): conv1.weight: {dtype}, bn2.running_var: {dtype}" in message, message
    assert "float32 or float64 (either loads, converted to this model's float32)" in message
    assert "misshapen" not in message and "missing" not in message
    assert rn.is_built(model) == built
    if built:
        after = rn.get_arrays(model)
        assert all(np.array_equal(after[name], before[name]) for name in before)


def test_precisions_convert_both_ways(rn, tmp_path):
    """A float64 model saves float64; each precision's file loads into the other's model, converted."""
    arch, classes = SMALL_RESNET.args
    weights = reference_weights(specs.book_resnet(arch, classes), (1, 1, 8, 8), seed=2)
    wide = rn.ResNet(arch, num_classes=classes, dtype="float64")
    resnet.output_shape(wide, (1, 1, 8, 8))
    rn.set_arrays(wide, {name: value.astype(np.float64) + 1e-12 for name, value in weights.items()})
    resnet.save_weights(wide, tmp_path / "f64.safetensors")
    saved, _ = read_weights(tmp_path / "f64.safetensors")
    assert all(value.dtype == np.float64 for value in saved.values())
    assert rn.dtype_of(wide) == "float64" and all(v.dtype == np.float64 for v in rn.get_arrays(wide).values())

    narrow = resnet.load_weights(rn.ResNet(arch, num_classes=classes), tmp_path / "f64.safetensors")
    assert rn.dtype_of(narrow) == "float32"
    for name, value in rn.get_arrays(narrow).items():
        assert value.dtype == np.float32 and np.array_equal(value, saved[name].astype(np.float32)), name
    resnet.save_weights(narrow, tmp_path / "f32.safetensors")
    again = resnet.load_weights(rn.ResNet(arch, num_classes=classes, dtype="float64"), tmp_path / "f32.safetensors")
    for name, value in rn.get_arrays(again).items():
        assert value.dtype == np.float64 and np.array_equal(value, saved[name].astype(np.float32)), name


def _safetensors_bytes(header: dict, data: bytes) -> bytes:
    """A safetensors file by hand: the 8-byte header length, the JSON header, the data."""
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + data


def _zip_bytes() -> bytes:
    """What torch.save writes: a zip archive holding a pickle."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"conv1.weight": [0.0]}, protocol=2))
    return buffer.getvalue()


_GOOD = _safetensors_bytes(
    {"__metadata__": {"format": "resnet.neutral/1"}, "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}},
    bytes(16),
)
#: Files that are not readable weights files, and what the error must say each is.
UNREADABLE_FILES = {
    "empty": (b"", r"is empty \(0 bytes\).*copy or save it again"),
    "truncated-data": (
        _GOOD[:-5],
        r"truncated: its header declares a file of 134 bytes, but it has only 129 \(5 missing",
    ),
    "truncated-header": (_GOOD[:30], r"truncated: its header declares 110 header bytes, but the file has only 22"),
    "too-short": (_GOOD[:5], r"5 bytes long, too short for a safetensors header"),
    "random": (np.random.default_rng(0).bytes(300), r"not a safetensors file \(random bytes or another format"),
    "pickle": (pickle.dumps({"conv1.weight": [0.0]}, protocol=2), "a pickle/PyTorch .pt file renamed .safetensors"),
    "torch-zip": (
        _zip_bytes(),
        r"a pickle/PyTorch \.pt file renamed \.safetensors: this package never unpickles.*"
        r"convert it with safetensors: save_file",
    ),
}


@pytest.mark.parametrize("kind", UNREADABLE_FILES)
def test_unreadable_file_says_what_it_is(rn, tmp_path, kind):
    """Each file is named for what it is, with what to do; the model stays unbuilt and the file unchanged."""
    content, message = UNREADABLE_FILES[kind]
    path = tmp_path / "w.safetensors"
    path.write_bytes(content)
    model = rn.Residual(3)
    with pytest.raises(
        WeightsFileError, match=f"'{re.escape(str(path))}' is not a readable safetensors weights file: it .*{message}"
    ):
        resnet.load_weights(model, path)
    assert not rn.is_built(model)
    assert path.read_bytes() == content and os.listdir(tmp_path) == ["w.safetensors"]


def test_bfloat16_file_is_refused(rn, tmp_path):
    """NumPy alone cannot hold bfloat16, so read_weights names the tensors it cannot read; where TensorFlow or JAX
    registered the dtype (ml_dtypes), the file reads and load_weights refuses the dtype. Either way it never loads."""
    path = tmp_path / "bf16.safetensors"
    header = {
        "__metadata__": {"format": "resnet.neutral/1"},
        "conv1.weight": {"dtype": "BF16", "shape": [3, 3, 3, 3], "data_offsets": [0, 162]},
    }
    path.write_bytes(_safetensors_bytes(header, bytes(162)))
    model = rn.Residual(3)
    with pytest.raises(
        ValueError,
        match=r"dtypes NumPy cannot represent \(conv1.weight: BF16\); weights files hold "
        r"float32 or float64|wrong dtype \(1\): conv1.weight: bfloat16",
    ):
        resnet.load_weights(model, path)
    assert not rn.is_built(model)


def test_missing_file_and_directory_are_named(rn, tmp_path):
    with pytest.raises(FileNotFoundError, match="no weights file at"):
        resnet.load_weights(rn.Residual(3), tmp_path / "absent.safetensors")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "last.safetensors").write_bytes(b"")
    with pytest.raises(
        IsADirectoryError,
        match=f"'{re.escape(str(tmp_path / 'run'))}' is a directory, not a weights "
        "file; it holds last.safetensors. Give the path of a .safetensors",
    ):
        resnet.load_weights(rn.Residual(3), tmp_path / "run")


def test_save_into_a_directory_or_under_a_file_is_refused(rn, tmp_path):
    """Refused up front, naming the path given (not a temporary file), and nothing is written."""
    model = rn.Residual(3)
    resnet.output_shape(model, (1, 3, 4, 4))
    with pytest.raises(
        IsADirectoryError,
        match=f"cannot save weights to '{re.escape(str(tmp_path))}': it is a directory. Give a file path, e.g.",
    ):
        resnet.save_weights(model, tmp_path)
    (tmp_path / "notes").write_text("a file")
    with pytest.raises(NotADirectoryError, match=f"'{re.escape(str(tmp_path / 'notes'))}' is a file, not a directory"):
        resnet.save_weights(model, tmp_path / "notes" / "deeper" / "w.safetensors")
    assert os.listdir(tmp_path) == ["notes"] and (tmp_path / "notes").read_text() == "a file"


def _residual_file(rn, tmp_path, channels: int = 3, change=None) -> str:
    """A file saved from a built Residual(channels), its arrays first changed by ``change`` if given."""
    source = rn.Residual(channels)
    resnet.output_shape(source, (1, channels, 4, 4))
    arrays = rn.get_arrays(source)
    if change:
        change(arrays)
    path = str(tmp_path / "w.safetensors")
    write_weights(arrays, path, {"spec": repr(source.spec)})
    return path


MISFITS = {
    "misshapen": (
        lambda a: a.update({"conv2.weight": np.zeros((3, 3, 1, 1), np.float32)}),
        r"misshapen \(1\): conv2.weight: file \(3, 3, 1, 1\) float32, model \(3, 3, 3, 3\) float32",
    ),
    "first-kernel-missing": (lambda a: a.pop("conv1.weight"), r"missing \(1\): conv1.weight"),
    "channels-unfit": (
        lambda a: a.update({"conv1.weight": np.zeros((3, 2, 3, 3), np.float32)}),
        "saved for 2 input channels .its conv1.weight., and this Residual has an identity shortcut",
    ),
    "nan": (
        lambda a: a["bn1.running_var"].__setitem__(slice(0, 2), np.nan),
        r"was not loaded: 1 of its 12 tensors hold NaN or inf \(bn1.running_var: 2 NaN\)",
    ),
}


@pytest.mark.parametrize("misfit", MISFITS)
def test_failed_load_leaves_an_unbuilt_model_unbuilt(rn, tmp_path, misfit):
    """The file is checked against the model's description before the model is built; after a refusal the
    model still builds for any input (here 3 channels) and loads a good file."""
    change, message = MISFITS[misfit]
    model = rn.Residual(3)
    with pytest.raises(ValueError, match=message):
        resnet.load_weights(model, _residual_file(rn, tmp_path, change=change))
    assert not rn.is_built(model)
    good = _residual_file(rn, tmp_path)
    loaded = rn.get_arrays(resnet.load_weights(model, good))
    assert all(np.array_equal(loaded[name], value) for name, value in read_weights(good)[0].items())


def test_family_model_refuses_a_file_for_other_input_channels_unbuilt(rn, tmp_path):
    case = SMALL_FAMILY_MODELS[0]  # made for 3 input channels
    arrays = reference_weights(case.spec, case.input_shape, seed=0)
    arrays["b1.conv.weight"] = arrays["b1.conv.weight"][:, :1]
    path = tmp_path / "one-channel.safetensors"
    write_weights(arrays, path, {})
    model = case.make(rn)
    with pytest.raises(
        resnet.WeightsMismatchError,
        match="saved for 1 input channels .its b1.conv.weight., and this model was built for 3 input channels",
    ):
        resnet.load_weights(model, path)
    assert not rn.is_built(model)


@pytest.mark.parametrize("built", [True, False], ids=["built", "unbuilt"])
def test_old_preact_layout_is_named_with_what_to_do(rn, tmp_path, built):
    """A pre-activation model's file from the old layout (release 0.1.0's: BN and ReLU in the stem, ``b1.bn.*``)
    is refused, built or not, saying what the file is, what changed and what can be done; the model is unchanged.
    Dropping the stem's BN, as the message says, gives a file that loads."""
    case = SMALL_FAMILY_MODELS[1]  # a small pre-activation model, 16 stem channels
    assert case.spec.stem.preact and "b1.bn" not in case.spec.stem.layers()
    old = dataclasses.replace(case.spec, stem=dataclasses.replace(case.spec.stem, preact=False))
    arrays = reference_weights(old, case.input_shape, seed=0)
    path = tmp_path / "old-preact.safetensors"
    write_weights(arrays, path, {"spec": repr(old)})
    model = case.make(rn)
    if built:
        resnet.output_shape(model, case.input_shape)
        before = rn.get_arrays(model)
    with pytest.raises(OldPreactLayoutError) as caught:
        resnet.load_weights(model, path)
    message = str(caught.value)
    assert isinstance(caught.value, resnet.WeightsMismatchError)
    assert "old layout (resnet 0.1.0's preact_resnet*)" in message
    assert "b1.bn.bias, b1.bn.running_mean, b1.bn.running_var, b1.bn.weight: 32 trainable parameters for 16" in message
    assert "timm's ResNetV2" in message and "Retrain" in message and "drop the b1.bn.* tensors" in message
    assert "also" not in message  # nothing else is wrong with the file
    if built:
        assert all(np.array_equal(rn.get_arrays(model)[name], value) for name, value in before.items())
    else:
        assert not rn.is_built(model)
    dropped = {name: value for name, value in arrays.items() if not name.startswith("b1.bn.")}
    write_weights(dropped, tmp_path / "dropped.safetensors", {})
    loaded = rn.get_arrays(resnet.load_weights(model, tmp_path / "dropped.safetensors"))
    assert all(np.array_equal(loaded[name], np.float32(value)) for name, value in dropped.items())


def test_old_preact_layout_with_other_misfits_lists_them(rn, tmp_path):
    """The old layout's stem BN and another misfit: the old layout is named, and the rest listed too."""
    case = SMALL_FAMILY_MODELS[1]
    old = dataclasses.replace(case.spec, stem=dataclasses.replace(case.spec.stem, preact=False))
    arrays = reference_weights(old, case.input_shape, seed=0)
    del arrays["last.fc.bias"]
    write_weights(arrays, tmp_path / "old.safetensors", {})
    with pytest.raises(OldPreactLayoutError, match=r"(?s)old layout.*also missing \(1\): last.fc.bias"):
        resnet.load_weights(case.make(rn), tmp_path / "old.safetensors")


@pytest.mark.parametrize("value, counts", [(np.nan, "3 NaN"), (np.inf, "3 \\+inf"), (-np.inf, "3 -inf")])
def test_non_finite_weights_are_refused_and_the_model_unchanged(rn, tmp_path, value, counts):
    """A diverged checkpoint never loads: the tensors are named with their counts. read_weights reads it still
    (resume code inspects it), and check_finite is the check training calls."""

    def poison(arrays):
        arrays["conv1.weight"].reshape(-1)[:3] = value
        arrays["bn2.bias"][0] = np.nan

    path = _residual_file(rn, tmp_path, change=poison)
    model = rn.Residual(3)
    resnet.output_shape(model, (1, 3, 4, 4))
    before = rn.get_arrays(model)
    expected = f"2 of its 12 tensors hold NaN or inf \\(bn2.bias: 1 NaN; conv1.weight: {counts}\\)"
    with pytest.raises(NonFiniteWeightsError, match=expected):
        resnet.load_weights(model, path)
    after = rn.get_arrays(model)
    assert all(np.array_equal(after[name], before[name]) for name in before)
    arrays, _ = read_weights(path)
    assert np.isnan(arrays["bn2.bias"][0])
    with pytest.raises(NonFiniteWeightsError, match="'here' was not loaded: " + expected):
        check_finite(arrays, "'here'")
    check_finite(before, "'the model'")  # finite: no error


def test_header_model_description(rn, tmp_path):
    """save_weights writes the model's description into the header; a file without one is named as such."""
    model = rn.Residual(3)
    resnet.output_shape(model, (1, 3, 4, 4))
    resnet.save_weights(model, tmp_path / "saved.safetensors")
    _, header = read_weights(tmp_path / "saved.safetensors")
    assert model_description(header, "'saved'") == repr(model.spec)
    write_weights(rn.get_arrays(model), tmp_path / "bare.safetensors", {"backend": "other"})
    _, header = read_weights(tmp_path / "bare.safetensors")
    with pytest.raises(
        NoModelDescriptionError,
        match="'bare' has no model description in its header .it was not "
        "written by resnet.save_weights/resnet train; its header "
        "holds backend, format.",
    ):
        model_description(header, "'bare'")


def test_save_is_atomic(rn, tmp_path, monkeypatch):
    """A crash while writing leaves the previous file intact and no temporary file behind."""
    model = rn.Residual(3)
    resnet.output_shape(model, (1, 3, 4, 4))
    path = tmp_path / "w.safetensors"
    resnet.save_weights(model, path)
    good = path.read_bytes()
    import safetensors.numpy

    def crash(*args, **kwargs):
        with open(args[1], "wb") as half:
            half.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.numpy, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        resnet.save_weights(model, path)
    assert path.read_bytes() == good
    assert os.listdir(tmp_path) == ["w.safetensors"]


#: What a weights file carries between backends: the chapter's small ResNet and the family's small
#: pre-activation model.
CROSS_BACKEND_CASES = [SMALL_RESNET, SMALL_FAMILY_MODELS[1]]


@pytest.mark.parametrize(
    "source, target, case",
    [
        pytest.param(source, target, case, id=f"{source}-{target}-{case.name}")
        for source, target in itertools.permutations(INSTALLED, 2)
        for case in CROSS_BACKEND_CASES
    ]
    or [
        pytest.param(
            None,
            None,
            None,
            marks=pytest.mark.skip(
                reason="one backend in this environment: cross-backend loading is proven through the golden files"
            ),
        )
    ],
)
def test_save_in_one_backend_load_in_another(source, target, case, tmp_path):
    """A file saved in one backend loads into another, which then computes what the first computes and what the
    reference computes."""
    src, dst = (importlib.import_module(f"resnet.backends.{n}") for n in (source, target))
    arrays = golden(case)
    model = case.make(src)
    resnet.load_weights(model, _golden_weights_file(arrays, tmp_path))
    resnet.save_weights(model, tmp_path / "from_source.safetensors")
    other = resnet.load_weights(case.make(dst), tmp_path / "from_source.safetensors")
    output = resnet.forward(other, arrays["input"])
    np.testing.assert_allclose(output, resnet.forward(model, arrays["input"]), atol=1e-5)
    assert_close(output, arrays["inference"], tolerance(case), f"{target} output from {source}'s file")


FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
#: Weights files written by release 0.1.0 (commit 17c8a47, PyTorch backend, after one training-mode pass), with the
#: cases they were saved from: every later layout of the package must load them unchanged.
RELEASE_FILES = {
    "release-0.1.0-small_resnet.safetensors": SMALL_RESNET,
    "release-0.1.0-small_resnext.safetensors": next(c for c in FAMILY_CASES if c.name == "small_resnext"),
}


@pytest.mark.parametrize("filename", RELEASE_FILES)
def test_weights_file_of_the_first_release_loads_unchanged(rn, filename):
    case, path = RELEASE_FILES[filename], os.path.join(FIXTURES, filename)
    saved, metadata = read_weights(path)
    assert metadata["backend"] == "torch"
    model = resnet.load_weights(case.make(rn), path)
    loaded = rn.get_arrays(model)
    assert sorted(loaded) == sorted(saved)
    for name, value in saved.items():
        np.testing.assert_array_equal(loaded[name], value, err_msg=name)
    x = case.inputs()["input"]
    np.testing.assert_allclose(resnet.forward(model, x), Reference(case.spec, saved).forward(x), atol=1e-4)
