"""Keras Hub's ResNet checkpoints to neutral weights files (resnet.checkpoints.keras_hub).

Where keras-hub is installed, its own ResNetBackbone and ResNetImageClassifier (v1, and v2 with
``use_pre_activation=True``) are built with random weights and randomized BatchNorm statistics, saved the three
ways Keras Hub saves (a preset directory, ``save_weights``' .weights.h5, a .keras archive), converted, loaded into
every backend under test and compared with Keras Hub's own outputs in inference mode. Without keras-hub, the
tables' round trips and the refusals still run (the refusals need h5py, which Keras installs).
"""

from __future__ import annotations

import functools
import json
import shutil

import numpy as np
import pytest
from helpers import assert_close, needs_library

import resnet
from resnet.checkpoints import CheckpointMismatchError, architecture_spec, convert, from_canonical, import_weights
from resnet.checkpoints.keras_hub import WEIGHT_NAMES, keras_order, read_keras_hub
from resnet.checkpoints.mapping import to_canonical
from resnet.shapes import model_part_shapes, tensor_infos
from resnet.specs import resnet_spec

needs_keras_hub = needs_library("keras_hub", install="pip install keras-hub")
CLASSES = 5
INPUT = (2, 3, 32, 32)

#: Keras Hub models: (block_type, use_pre_activation, stage filters, stage depths, how it is saved).
CASES = {
    "v1-resnet18": ("basic_block", False, (64, 128, 256, 512), (2, 2, 2, 2), "preset"),
    "v1-bottleneck": ("bottleneck_block", False, (64, 128), (2, 1), "weights.h5"),
    "v2-bottleneck": ("bottleneck_block", True, (64, 128), (2, 1), "preset"),
    "v2-basic": ("basic_block", True, (64, 128, 256), (1, 2, 1), "keras"),
}


def our_spec(case: str):
    """The model of this package that computes Keras Hub model ``case``."""
    block_type, preact, filters, depths, _ = CASES[case]
    kind = ("preact_" if preact else "") + block_type.removesuffix("_block")
    return resnet_spec(kind, depths, filters, num_classes=CLASSES)


def build_keras_hub(case: str):
    """A Keras Hub ResNetImageClassifier for ``case``: Keras' random kernels, a random dense bias and random
    BatchNorm scales, shifts and running statistics (the defaults, 1/0/0/1, would hide a swapped pair)."""
    import keras
    import keras_hub

    block_type, preact, filters, depths, _ = CASES[case]
    keras.utils.set_random_seed(1)
    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[7],
        stackwise_num_filters=list(filters),
        stackwise_num_blocks=list(depths),
        stackwise_num_strides=[1] + [2] * (len(filters) - 1),
        block_type=block_type,
        use_pre_activation=preact,
        image_shape=(None, None, 3),
    )
    classifier = keras_hub.models.ResNetImageClassifier(backbone=backbone, num_classes=CLASSES)
    rng = np.random.default_rng(3)
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights(
                [rng.uniform(0.5, 1.5, c), rng.normal(0, 0.2, c), rng.normal(0, 0.2, c), rng.uniform(0.5, 1.5, c)]
            )
    kernel, bias = classifier.output_dense.get_weights()
    classifier.output_dense.set_weights([kernel, rng.normal(0, 0.5, bias.shape)])
    return classifier


@pytest.fixture(scope="module")
def keras_hub_models(tmp_path_factory) -> dict:
    """case -> (saved path, NCHW input, Keras Hub's logits in inference and in training mode, Keras Hub's weight
    names, its layer order, the backbone's config)."""
    import keras

    out = {}
    for case, (*_, saved) in CASES.items():
        classifier = build_keras_hub(case)
        root = tmp_path_factory.mktemp(case)
        path = {"preset": root / "preset", "weights.h5": root / "x.weights.h5", "keras": root / "x.keras"}[saved]
        if saved == "preset":
            classifier.save_to_preset(str(path))
        elif saved == "keras":
            classifier.save(str(path))
        else:
            classifier.save_weights(str(path))
        x = np.random.default_rng(5).standard_normal(INPUT).astype(np.float32)
        logits = keras.ops.convert_to_numpy(classifier(x.transpose(0, 2, 3, 1), training=False))
        # training mode last: it moves the classifier's running statistics, saved above
        training = keras.ops.convert_to_numpy(classifier(x.transpose(0, 2, 3, 1), training=True))
        backbone = classifier.backbone
        layers = [*backbone.layers, classifier.output_dense]
        names = {f"{layer.name}/{w.name}" for layer in layers for w in layer.weights}
        order = {
            cls: [layer.name for layer in backbone.layers if type(layer) is getattr(keras.layers, kind)]
            for cls, kind in [("conv2d", "Conv2D"), ("batch_normalization", "BatchNormalization")]
        }
        out[case] = (path, x, logits.astype(np.float64), training, names, order, backbone.get_config())
    return out


# ------------------------------------------------------------------------------------ against Keras Hub itself


@needs_keras_hub
@pytest.mark.parametrize("case", CASES)
def test_converted_keras_hub_model_gives_its_logits(rn, keras_hub_models, tmp_path, case):
    path, x, expected, *_ = keras_hub_models[case]
    # a preset and a .keras archive say which model they hold; a bare .weights.h5 does not
    model_name = our_spec(case) if CASES[case][4] == "weights.h5" else None
    spec = convert(path, "keras-hub", model_name, tmp_path / "ours.safetensors")
    assert spec == our_spec(case)
    model = resnet.load_weights(rn.ResNet(spec=spec), tmp_path / "ours.safetensors")
    # float32 against float32: both sum the same products in other orders
    atol = 5e-6 * max(1.0, float(np.abs(expected).max()))  # measured: below 1e-6 in every backend
    assert_close(resnet.forward(model, x), expected, atol, f"Keras Hub {case} logits in {rn.NAME}")
    # training mode (BatchNorm on the batch), where the last stage is larger than 1x1: BatchNorm over the 2 values
    # of a 1x1 map amplifies float32 rounding beyond any useful bound (ResNet-18 at 32x32: 6.7e-3 between Keras
    # Hub and torch, measured; the float64 tests in test_convert.py cover that case against the reference)
    last_stage = [shape for part, shape in model_part_shapes(spec, x.shape) if part != "last"][-1]
    if last_stage[2] * last_stage[3] > 1:
        training = keras_hub_models[case][3].astype(np.float64)
        atol = 5e-6 * max(1.0, float(np.abs(training).max()))
        got = resnet.forward(model, x, training=True)
        assert_close(got, training, atol, f"Keras Hub {case} training-mode logits in {rn.NAME}")


@needs_keras_hub
def test_keras_hub_preset_converts_by_model_name(keras_hub_models, tmp_path):
    path, *_ = keras_hub_models["v1-resnet18"]
    by_name, spec = import_weights(path, "keras-hub", "resnet18")
    by_config, _ = import_weights(path, "keras-hub", None)
    assert spec == architecture_spec("resnet18", CLASSES)
    assert all(np.array_equal(by_name[k], by_config[k]) for k in by_config)


@needs_keras_hub
@pytest.mark.parametrize("case", CASES)
def test_table_gives_keras_hubs_names(keras_hub_models, case):
    *_, names, _, _ = keras_hub_models[case]
    spec = our_spec(case)
    weights = {n: np.zeros(i.shape, np.float32) for n, i in tensor_infos(spec, INPUT).items()}
    ours = set(from_canonical(weights, "keras-hub", spec))
    assert ours == names, f"only ours {sorted(ours - names)[:5]}, only Keras Hub's {sorted(names - ours)[:5]}"


@needs_keras_hub
@pytest.mark.parametrize("case", CASES)
def test_layer_order_is_keras(keras_hub_models, case):
    """keras_order, which names the layers of files that do not, orders them as Keras does."""
    *_, order, config = keras_hub_models[case]
    expected = keras_order(config)
    assert {cls: expected[cls] for cls in order} == order


@needs_keras_hub
@pytest.mark.parametrize("case", ["v1-resnet18", "v2-bottleneck"])
def test_preset_without_layer_names_reads_by_position(keras_hub_models, tmp_path, case):
    """A preset saved by Keras before 3.6 has no layer names in its .weights.h5 files: the same tensors come
    out, from config.json's layer order."""
    import h5py

    path, *_ = keras_hub_models[case]
    unnamed = shutil.copytree(path, tmp_path / "unnamed")

    def strip(name: str, obj) -> None:  # (visititems stops at the first callback that returns something)
        if "name" in obj.attrs:
            del obj.attrs["name"]

    for file in ("model.weights.h5", "task.weights.h5"):
        with h5py.File(unnamed / file, "a") as f:
            f.visititems(strip)
    named, _ = read_keras_hub(path)
    positional, _ = read_keras_hub(unnamed)
    assert sorted(named) == sorted(positional)
    assert all(np.array_equal(named[k], positional[k]) for k in named)
    with pytest.raises(ValueError, match="does not name its layers"):
        read_keras_hub(unnamed / "model.weights.h5")  # alone, without its config


@needs_keras_hub
def test_bfloat16_preset_reads_exactly(tmp_path):
    import keras
    import keras_hub

    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[7],
        stackwise_num_filters=[64, 128],
        stackwise_num_blocks=[1, 1],
        stackwise_num_strides=[1, 2],
        block_type="basic_block",
        use_pre_activation=True,
        dtype="bfloat16",
    )
    keras_hub.models.ResNetImageClassifier(backbone=backbone, num_classes=CLASSES).save_to_preset(str(tmp_path / "p"))
    arrays, _ = read_keras_hub(tmp_path / "p")
    kernel = keras.ops.convert_to_numpy(keras.ops.cast(backbone.get_layer("conv1_conv").kernel, "float32"))
    assert arrays["conv1_conv/kernel"].dtype == np.float32 and np.array_equal(arrays["conv1_conv/kernel"], kernel)


# ------------------------------------------------------------------------------------ tables (no framework)


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "preact_resnet18", "preact_resnet50"])
def test_round_trip_through_keras_hub_names_is_bit_identical(name):
    spec = architecture_spec(name, CLASSES)
    weights = {
        n: np.arange(np.prod(i.shape), dtype=np.float32).reshape(i.shape) for n, i in tensor_infos(spec, INPUT).items()
    }
    published = from_canonical(weights, "keras-hub", spec)
    assert published["conv1_conv/kernel"].shape == (7, 7, 3, 64)  # HWIO
    assert published["predictions/kernel"].shape == (spec.stages[-1][1][-1].num_channels, CLASSES)  # (in, out)
    back = to_canonical(published, "keras-hub", spec)
    assert all(back[k].dtype == v.dtype and np.array_equal(back[k], v) for k, v in weights.items())


def test_grouped_or_paper_stride_models_are_refused():
    with pytest.raises(CheckpointMismatchError, match="no grouped or widened"):
        from_canonical({}, "keras-hub", architecture_spec("resnext50_32x4d"))
    with pytest.raises(CheckpointMismatchError, match="stride on the 3x3"):
        from_canonical({}, "keras-hub", architecture_spec("resnet50", stride_in_1x1=True))


# ------------------------------------------------------------------------------------ refusals (h5py only)


def write_keras_weights(path, arrays: dict[str, np.ndarray], named: bool = True) -> None:
    """A Keras 3 .weights.h5 file of ``layer/weight`` arrays: groups ``layers/<class>_<k>/vars`` with datasets
    ``0``, ``1``... in Keras' weight order, the layer's name in the ``name`` attribute (Keras 3.6+)."""
    import h5py

    layers: dict[str, dict[str, np.ndarray]] = {}
    for full, value in arrays.items():
        layer, weight = full.rsplit("/", 1)
        layers.setdefault(layer, {})[weight] = value
    counters: dict[str, int] = {}
    with h5py.File(path, "w") as f:
        for layer, values in layers.items():
            cls = "batch_normalization" if layer.endswith("_bn") else "conv2d" if layer.endswith("_conv") else "dense"
            k = counters[cls] = counters.get(cls, -1) + 1
            group = f.create_group(f"layers/{cls}{f'_{k}' if k else ''}/vars")
            if named:
                group.attrs["name"] = layer
            for index, kind in enumerate(WEIGHT_NAMES[cls]):
                if kind in values:
                    group[str(index)] = values[kind]


@functools.cache
def published(name: str) -> dict[str, np.ndarray]:
    spec = architecture_spec(name, CLASSES)
    rng = np.random.default_rng(0)
    weights = {n: rng.standard_normal(i.shape).astype(np.float32) for n, i in tensor_infos(spec, INPUT).items()}
    return from_canonical(weights, "keras-hub", spec)


CONFIG = {
    "module": "keras_hub.src.models.resnet.resnet_backbone",
    "class_name": "ResNetBackbone",
    "config": {
        "input_conv_filters": [64],
        "input_conv_kernel_sizes": [7],
        "stackwise_num_filters": [64, 128, 256, 512],
        "stackwise_num_blocks": [2, 2, 2, 2],
        "stackwise_num_strides": [1, 2, 2, 2],
        "block_type": "basic_block",
        "use_pre_activation": False,
    },
}


def write_preset(root, arrays: dict[str, np.ndarray], task: dict | None = None, **changes) -> None:
    """A preset directory as ``save_to_preset`` writes one: config.json (the backbone's config with
    ``changes``), model.weights.h5, and task.json (``task``: the classifier's config) and task.weights.h5."""
    root.mkdir()
    config = json.loads(json.dumps(CONFIG))
    config["config"].update(changes)
    (root / "config.json").write_text(json.dumps(config))
    if task is not None:
        classifier = {"backbone": config, "num_classes": CLASSES, "pooling": "avg", "activation": None, **task}
        (root / "task.json").write_text(json.dumps({"class_name": "ResNetImageClassifier", "config": classifier}))
    write_keras_weights(root / "model.weights.h5", {k: v for k, v in arrays.items() if not k.startswith("predictions")})
    head = {k: v for k, v in arrays.items() if k.startswith("predictions")}
    if head:
        write_keras_weights(root / "task.weights.h5", head)


def test_unknown_and_missing_weights_are_listed(tmp_path):
    arrays = dict(published("resnet18"))
    del arrays["stack1_block0_0_bn/gamma"]
    arrays["extra_conv/kernel"] = np.zeros((1, 1, 8, 8), np.float32)
    write_keras_weights(tmp_path / "x.weights.h5", arrays)
    with pytest.raises(CheckpointMismatchError) as raised:
        import_weights(tmp_path / "x.weights.h5", "keras-hub", "resnet18")
    message = str(raised.value)
    assert "unknown (1): extra_conv/kernel" in message
    assert "missing (1): stack1_block0_0_bn/gamma" in message


def test_v1_file_asked_as_v2_names_what_it_is(tmp_path):
    write_keras_weights(tmp_path / "x.weights.h5", published("resnet18"))
    with pytest.raises(CheckpointMismatchError, match="no pre-activation BN") as raised:
        import_weights(tmp_path / "x.weights.h5", "keras-hub", "preact_resnet18")
    assert "looks like resnet18" in str(raised.value)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"block_type": "bottleneck_block_vd"}, "ResNet_vd"),
        ({"input_conv_filters": [32, 32, 64], "input_conv_kernel_sizes": [3, 3, 3]}, "stem has convolutions"),
        ({"stackwise_num_strides": [1, 1, 2, 2]}, "stage strides"),
    ],
    ids=["vd", "deep-stem", "strides"],
)
def test_configs_no_model_computes_are_refused(tmp_path, changes, match):
    write_preset(tmp_path / "preset", published("resnet18"), **changes)
    with pytest.raises(CheckpointMismatchError, match=match):
        import_weights(tmp_path / "preset", "keras-hub", None)


def test_classifier_head_options(tmp_path):
    """Max pooling is refused; a softmax on the outputs is said (the converted model gives the logits)."""
    write_preset(tmp_path / "max", published("resnet18"), task={"pooling": "max"})
    with pytest.raises(CheckpointMismatchError, match="pools with 'max'"):
        import_weights(tmp_path / "max", "keras-hub", None)
    write_preset(tmp_path / "softmax", published("resnet18"), task={"activation": "softmax"})
    with pytest.warns(UserWarning, match="applies 'softmax'.*logits before it"):
        arrays, spec = import_weights(tmp_path / "softmax", "keras-hub", None)
    assert spec == architecture_spec("resnet18", CLASSES) and len(arrays) == len(published("resnet18"))


def test_backbone_without_head_is_named(tmp_path):
    backbone = {k: v for k, v in published("resnet18").items() if not k.startswith("predictions")}
    write_preset(tmp_path / "preset", backbone)
    with pytest.raises(CheckpointMismatchError, match="no classifier head"):
        import_weights(tmp_path / "preset", "keras-hub", None)


def test_keras2_and_unnamed_files_are_refused(tmp_path):
    import h5py

    with h5py.File(tmp_path / "keras2.h5", "w") as f:
        f.attrs["layer_names"] = [b"conv1_conv"]
    with pytest.raises(ValueError, match="Keras 2 HDF5 file"):
        import_weights(tmp_path / "keras2.h5", "keras-hub", "resnet50")
    write_keras_weights(tmp_path / "old.weights.h5", published("resnet18"), named=False)
    with pytest.raises(ValueError, match="does not name its layers"):
        import_weights(tmp_path / "old.weights.h5", "keras-hub", "resnet18")


def test_unnamed_preset_reads_by_position(tmp_path):
    """Without names, a preset's layers are named from config.json (here a file written in Keras' order)."""
    arrays = published("resnet18")
    position = {
        layer: i for kind in ("conv2d", "batch_normalization") for i, layer in enumerate(keras_order(CONFIG)[kind])
    }
    backbone = {k: v for k, v in arrays.items() if not k.startswith("predictions")}
    # Keras' order differs from ours (a projection's layers come before the block's last ones)
    in_keras_order = dict(sorted(backbone.items(), key=lambda item: position[item[0].rsplit("/", 1)[0]]))
    assert list(in_keras_order) != list(backbone)
    root = tmp_path / "preset"
    root.mkdir()
    (root / "config.json").write_text(json.dumps(CONFIG))
    write_keras_weights(root / "model.weights.h5", in_keras_order, named=False)
    head = {k: v for k, v in arrays.items() if k.startswith("predictions")}
    write_keras_weights(root / "task.weights.h5", head, named=False)
    read, _ = read_keras_hub(root)
    assert sorted(read) == sorted(arrays) and all(np.array_equal(read[k], arrays[k]) for k in arrays)
