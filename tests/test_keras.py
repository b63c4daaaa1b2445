"""Keras' own idioms on the TensorFlow backend's layers and models: ``get_config``/``from_config`` and the
registered classes, ``model.save("m.keras")`` + ``keras.models.load_model``, ``keras.models.clone_model``,
``model.build(input_shape)``, ``save_weights``/``load_weights``, canonical and stable weight paths, and a global
dtype policy refused with a clear error.

Keras idioms exist only in the TensorFlow backend: in an environment without it this module collects no tests
(pytest's ``__test__``), so nothing is reported as skipped; TensorFlow is imported only by the fixtures.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    CHAPTER_BLOCK_CASES,
    FAMILY_BLOCK_CASES,
    INSTALLED,
    RESNET18,
    SMALL_FAMILY_MODELS,
    SMALL_RESNET,
    Case,
    case_ids,
)

from resnet import specs
from resnet.init import initial_weights
from resnet.shapes import num_trainable, tensor_infos
from resnet.specs import BatchNormSpec, ConvSpec, DenseSpec
from resnet.walk import tensors

__test__ = "tensorflow" in INSTALLED

#: The models saved and loaded: the book's ResNet and ResNet18 (the class itself), and family models built from
#: a description (``ResNet(spec=...)``), whose config holds that description as plain data.
MODEL_CASES = [SMALL_RESNET, Case("resnet18", "ResNet18", (), (2, 1, 32, 32), classifier=True), *SMALL_FAMILY_MODELS]
#: The Keras variable name of each canonical tensor kind, per layer type.
KERAS_NAMES = {
    ConvSpec: {"weight": "kernel", "bias": "bias"},
    BatchNormSpec: {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"},
    DenseSpec: {"weight": "kernel", "bias": "bias"},
}
assert RESNET18.cls == "ResNet18"  # the case above is helpers' RESNET18 at a smaller input
#: Keras' own HDF5 writer converts variables with np.array(x) in keras/src/backend/tensorflow/core.py, which NumPy 2
#: warns about on every tensor: Keras' warning, not this package's.
KERAS_H5_WARNING = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


@pytest.fixture
def rt():
    """The TensorFlow backend module."""
    return importlib.import_module("resnet.backends.tensorflow")


@pytest.fixture
def keras():
    """Keras, with the global dtype policy restored to float32 after the test."""
    keras = importlib.import_module("keras")
    yield keras
    keras.config.set_dtype_policy("float32")


def _seeded(rt, case: Case, seed: int = 5):
    """The case's block or model, built for its input, with the reference initializer's seeded weights."""
    model = case.make(rt)
    rt.build(model, case.input_shape)
    rt.set_arrays(model, initial_weights(model.spec, case.input_shape, seed=seed))
    return model


def _nhwc(case: Case) -> np.ndarray:
    return np.ascontiguousarray(case.inputs()["input"].transpose(0, 2, 3, 1))


def _expected_paths(spec, root: str) -> list[str]:
    """The Keras paths of a block's or model's weights: the canonical layer path under ``root``, then Keras'
    name of the tensor (``resnet18/net/b2/0/conv1/kernel`` for ``b2.0.conv1.weight``)."""
    return sorted(f"{root}/{'/'.join(t.layer_path)}/{KERAS_NAMES[type(t.layer)][t.kind]}" for t in tensors(spec))


@KERAS_H5_WARNING
@pytest.mark.parametrize("case", MODEL_CASES, ids=case_ids)
def test_keras_file_round_trips_inference_and_training(rt, keras, case, tmp_path):
    """``model.save("m.keras")`` and ``keras.models.load_model`` with no ``custom_objects``: the same class,
    description, lr, dtype, name, weight paths and outputs; then the same Keras training step (the compiled
    optimizer comes back too) and the same step of the package's own train step, which uses the loaded lr."""
    model = _seeded(rt, case)
    model.compile(
        optimizer=keras.optimizers.SGD(model.lr), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert type(loaded) is type(model)
    assert (loaded.spec, loaded.lr, rt.dtype_of(loaded), loaded.name) == (model.spec, 0.1, "float32", model.name)
    assert [v.path for v in loaded.weights] == [v.path for v in model.weights]
    x, labels = _nhwc(case), case.inputs()["labels"] % case.spec.head.num_classes
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))

    assert loaded.train_on_batch(x, labels) == pytest.approx(model.train_on_batch(x, labels), rel=1e-6)
    nchw = case.inputs()["input"]
    assert rt.make_train_step(loaded)(nchw, labels) == pytest.approx(rt.make_train_step(model)(nchw, labels), rel=1e-6)
    after, loaded_after = rt.get_arrays(model), rt.get_arrays(loaded)
    for name, value in after.items():
        np.testing.assert_allclose(loaded_after[name], value, rtol=1e-5, atol=1e-6, err_msg=name)


def test_a_models_config_keeps_its_description(rt):
    """The config holds the book's ``arch`` and ``lr``, or the description of any other model; ``from_config``
    rebuilds the same model, for every model of the family too."""
    config = rt.ResNet(((1, 64), (1, 32)), 0.05, 3, dtype="float64", name="small").get_config()
    assert config == {
        "arch": [[1, 64], [1, 32]],
        "lr": 0.05,
        "num_classes": 3,
        "spec": None,
        "dtype": "float64",
        "name": "small",
        "trainable": True,
    }
    assert rt.ResNet18(0.02, 4).get_config() == {
        "lr": 0.02,
        "num_classes": 4,
        "dtype": "float32",
        "name": "resnet18",
        "trainable": True,
    }
    for name in specs.FAMILY:
        spec = specs.family_spec(name, 7, 1, stride_in_1x1=name.startswith("preact"))
        rebuilt = rt.ResNet.from_config(rt.ResNet(spec=spec, lr=0.3).get_config())
        assert (rebuilt.spec, rebuilt.lr) == (spec, 0.3), name


@pytest.mark.parametrize("case", [*CHAPTER_BLOCK_CASES, *FAMILY_BLOCK_CASES], ids=case_ids)
def test_blocks_serialise(rt, keras, case):
    """A block through ``keras.layers.serialize``/``deserialize`` (registered as ``resnet>Name``): its arguments,
    name and dtype come back; built and given the weights, it computes the same."""
    block = _seeded(rt, case)
    config = keras.layers.serialize(block)
    assert config["registered_name"] == f"resnet>{case.cls}"
    copy = keras.layers.deserialize(config)
    assert type(copy) is type(block) and copy.spec == block.spec and copy.get_config() == block.get_config()
    copy.build(_nhwc(case).shape)
    copy.set_weights(block.get_weights())
    assert [v.path for v in copy.weights] == [v.path for v in block.weights]
    x = _nhwc(case)
    np.testing.assert_array_equal(np.asarray(copy(x, training=False)), np.asarray(block(x, training=False)))


def test_layers_serialise(rt, keras):
    """Every layer class of the backend (convolution, pooling, BatchNorm, Sequential, the projection shortcut)
    round-trips through Keras' serialization with the same config."""
    model = rt.ResNet(spec=specs.resnet_spec("bottleneck", (1,), (4,), 5, 3, stem_channels=8))
    model.build((None, 16, 16, 3))
    stem, stage = model.net.get_layer("b1"), model.net.get_layer("b2")
    layers = [stem.get_layer("conv"), stem.get_layer("bn"), stem.get_layer("pool"), stage, stage[0].downsample]
    assert [type(layer).__name__ for layer in layers] == ["Conv2d", "BatchNorm", "MaxPool2d", "Sequential", "Shortcut"]
    for layer in layers:
        config = keras.layers.serialize(layer)
        assert config["registered_name"] == f"resnet>{type(layer).__name__}"
        copy = keras.layers.deserialize(config)
        assert type(copy) is type(layer) and copy.get_config() == layer.get_config(), layer.name


def test_clone_model(rt, keras):
    """``keras.models.clone_model``: a model of the same class and description, built, with its own fresh
    weights under the same paths."""
    model = _seeded(rt, SMALL_RESNET)
    clone = keras.models.clone_model(model)
    assert type(clone) is type(model) and (clone.spec, clone.lr, clone.name) == (model.spec, model.lr, model.name)
    assert [v.path for v in clone.weights] == [v.path for v in model.weights]
    assert not np.array_equal(rt.get_arrays(clone)["b1.conv.weight"], rt.get_arrays(model)["b1.conv.weight"])
    assert clone(_nhwc(SMALL_RESNET)).shape == (4, 10)


@KERAS_H5_WARNING
def test_build_creates_the_weights(rt, keras, tmp_path):
    """``model.build((None, 32, 32, 1))`` builds every layer, without Keras' "no build() method" warning: the
    summary counts the parameters, ``load_weights`` works, and any input size runs afterwards."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = rt.ResNet18()
        model.build((None, 32, 32, 1))
        block = rt.Residual(8, True, 2)
        block.build((None, 16, 16, 4))
    infos = tensor_infos(model.spec, (1, 1, 32, 32))
    assert rt.is_built(model) and model.count_params() == sum(int(np.prod(i.shape)) for i in infos.values())
    assert rt.trainable_count(model) == num_trainable(model.spec, (1, 1, 32, 32)) == 11_178_378
    lines = []
    model.summary(print_fn=lambda line, *args, **kwargs: lines.append(line))
    assert any("Trainable params: 11,178,378" in line for line in lines)
    assert rt.is_built(block) and rt.trainable_count(block) == num_trainable(block.spec, (1, 4, 16, 16))

    rt.set_arrays(model, initial_weights(model.spec, (1, 1, 32, 32), seed=1))
    model.save_weights(tmp_path / "m.weights.h5")
    fresh = rt.ResNet18()
    fresh.build((None, 32, 32, 1))
    fresh.load_weights(tmp_path / "m.weights.h5")
    assert all(np.array_equal(value, rt.get_arrays(model)[name]) for name, value in rt.get_arrays(fresh).items())
    assert fresh(np.zeros((3, 40, 56, 1), np.float32)).shape == (3, 10)


def test_weight_paths_are_canonical_and_stable(rt):
    """Keras names are the canonical ones (``b1`` ... ``last``, a stage's blocks by index, ``conv1``,
    ``downsample``), so a model's weight paths are too, and they do not depend on what the process built before."""
    first = _seeded(rt, SMALL_RESNET)
    assert sorted(v.path for v in first.weights) == _expected_paths(first.spec, "resnet/net")
    assert [layer.name for layer in first.net.layers] == list(first.spec.part_names)
    for _ in range(2):
        _seeded(rt, SMALL_FAMILY_MODELS[0])
        _seeded(rt, CHAPTER_BLOCK_CASES[1])
    again = _seeded(rt, SMALL_RESNET)
    assert [v.path for v in again.weights] == [v.path for v in first.weights]
    book = rt.ResNet18()
    book.build((None, 32, 32, 1))
    assert sorted(v.path for v in book.weights) == _expected_paths(book.spec, "resnet18/net")
    assert "resnet18/net/b3/0/conv3/kernel" in {v.path for v in book.weights}  # b3.0.conv3.weight
    block = _seeded(rt, FAMILY_BLOCK_CASES[1])  # alone, a block keeps Keras' counted name: basic_block_3
    assert sorted(v.path for v in block.weights) == _expected_paths(block.spec, block.name)
    assert f"{block.name}/downsample/bn/moving_variance" in {v.path for v in block.weights}


@KERAS_H5_WARNING
def test_blocks_compose_into_a_functional_model(rt, keras, tmp_path):
    """The blocks are Keras layers: two of a kind in one functional ``keras.Model`` (which needs distinct names,
    Keras' counted ones), saved and loaded back with the same outputs."""
    inputs = keras.Input((8, 8, 4))
    outputs = rt.Residual(4)(rt.Residual(4)(rt.Bottleneck(1, True, 2)(rt.Residual(4)(inputs))))
    model = keras.Model(inputs, outputs)
    model.save(tmp_path / "blocks.keras")
    loaded = keras.models.load_model(tmp_path / "blocks.keras")
    x = np.random.default_rng(0).standard_normal((2, 8, 8, 4)).astype(np.float32)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    assert [v.path for v in loaded.weights] == [v.path for v in model.weights]


def test_a_global_dtype_policy_is_refused_or_honoured(rt, keras):
    """A global ``mixed_bfloat16`` (or any policy a model would ignore) is refused with a clear error, as mixed
    precision is in this CPU build; a float64 policy is honoured by a block alone and matches a float64 model."""
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    for make in (rt.ResNet18, rt.resnet50, lambda: rt.Residual(8), lambda: rt.Bottleneck(4)):
        with pytest.raises(ValueError, match="mixed precision is refused") as error:
            make()
        assert "keras.config.set_dtype_policy('float32')" in str(error.value)
    keras.config.set_dtype_policy("float64")
    with pytest.raises(ValueError, match="pass dtype='float64'"):
        rt.ResNet18()
    assert rt.dtype_of(rt.ResNet18(dtype="float64")) == "float64"
    block = rt.Residual(8)
    block.build((None, 4, 4, 8))
    assert rt.dtype_of(block) == "float64" and block.weights[0].dtype == "float64"
    keras.config.set_dtype_policy("float32")
    assert rt.dtype_of(rt.ResNet18()) == "float32"


#: Run in a fresh process with oneDNN off: whether the backend sees it off, and the training pass of every
#: grouped golden case against the reference (the gradient TensorFlow's own kernels lack).
ONEDNN_CHECK = """
import sys
sys.path.insert(0, sys.argv[1])
import tensorflow  # first, so that TF_ENABLE_ONEDNN_OPTS is read as the environment gives it
import resnet.backends.tensorflow as rn
from helpers import GOLDEN_CASES, assert_close, assert_grads_close, golden, loaded, section, tolerance
from resnet.backends.tensorflow import layers
grouped = [case for case in GOLDEN_CASES if "_g" in case.name and "_g1" not in case.name]
assert grouped, "no grouped golden case"
for case in grouped:
    arrays = golden(case)
    output, grads = rn.vjp(loaded(rn, case, arrays), arrays["input"], arrays["output_grad"])
    assert_close(output, arrays["training"], tolerance(case), case.name)
    assert_grads_close(grads, section(arrays, "grad"))
print(layers.ONEDNN, len(grouped))
"""


def test_grouped_convolutions_train_with_onednn_off(tmp_path):
    """TensorFlow turns oneDNN off by default on CPUs without AVX-512 VNNI and the like, and its own kernels have
    no gradient for a grouped convolution: the backend then computes one convolution per group, with the
    reference's numbers."""
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "0", "TF_CPP_MIN_LOG_LEVEL": "3"}
    check = subprocess.run(
        [sys.executable, "-c", ONEDNN_CHECK, str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,  # not the checkout, whose resnet/ would shadow the installed package
        env=env,
    )
    assert check.returncode == 0, check.stderr[-6000:]
    reported, count = check.stdout.split()
    assert reported == "False" and int(count) >= 4
