"""Keras Hub's ResNet checkpoints (``keras_hub.models.ResNetBackbone`` and ``ResNetImageClassifier``): presets
(a directory: ``config.json`` and ``model.weights.h5`` for the backbone, ``task.json`` and ``task.weights.h5``
for the classifier's head), ``.weights.h5`` files of ``model.save_weights`` and ``.keras`` archives, read with
h5py alone (no Keras).

Names here are Keras' own layer names with the weight's: ``conv1_conv/kernel``, ``conv1_bn/gamma``, a block's
``stack0_block0_1_conv/kernel`` ... ``_3_conv`` (``stackS`` counts the stages from 0), its projection
``stack1_block0_0_conv`` (and ``_0_bn``), and the head ``predictions/kernel``. Kernels are HWIO (dense (in, out)),
turned to OIHW ((out, in)) here. ``use_pre_activation=True`` (ResNetV2) names a block's first BN
``stackS_blockI_pre_activation_bn`` and the ones before its 2nd and 3rd convolutions ``_1_bn``, ``_2_bn``; its
stem is the convolution and the max pooling alone (its padding is minus infinity), its shortcuts are bare
convolutions on the pre-activated input, and ``post_bn`` (BN and ReLU) ends the backbone: the pre-activation
models here compute the same. A bottleneck's stride sits on its 3x3 convolution ("v1.5"), BatchNorm's epsilon is
1e-5 as here, convolutions have no bias.

The ``_vd`` variants (``block_type="basic_block_vd"``..., ``resnet_vd_*`` presets: a three-convolution stem and
average-pooled shortcuts) compute something else and are refused, as are stage strides other than 1, 2, 2...
and a head with max pooling. A preset's preprocessing (its ``preprocessor.json``: the image converter's resizing,
scale and offset) is not part of the weights: feed the converted model the images as the backbone gets them.

In a ``.weights.h5`` file each layer's tensors lie in a group ``layers/<class>_<k>/vars`` (``conv2d_3``: the
fourth convolution in the model's layer order) under datasets ``0``, ``1``...; Keras 3.6 and later also record
the layer's name in the group's ``name`` attribute, which is read here. Files saved by older versions lack it:
their layers are then named by their positions, which ``keras_order`` gives from the preset's ``config.json``.
"""

from __future__ import annotations

import io
import json
import os
import re
import warnings
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from resnet.checkpoints.mapping import CheckpointMismatchError, Rule, SourceFormat, register
from resnet.checkpoints.model_checks import check_model, describe_stages
from resnet.specs import ModelSpec, resnet_spec

__all__ = ["KERAS_HUB", "RULES", "RULES_V2", "WEIGHT_NAMES", "keras_order", "read_keras_hub", "spec_from_config"]

#: A Keras layer class (as ``.weights.h5`` files name it, in snake case) -> its weights' names, in the order
#: of the datasets ``0``, ``1``... (a BatchNorm with both ``scale`` and ``center``, as ResNets have).
WEIGHT_NAMES: dict[str, tuple[str, ...]] = {
    "conv2d": ("kernel", "bias"),
    "batch_normalization": ("gamma", "beta", "moving_mean", "moving_variance"),
    "dense": ("kernel", "bias"),
}
#: Canonical BatchNorm kinds -> Keras' weight names.
_BN = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}
_BLOCK = r"b(?P<stage>\d+)\.(?P<block>\d+)"
_STACK = "stack{stage0}_block{block}"

#: Canonical -> Keras Hub names of a ResNet (``use_pre_activation=False``).
RULES = (
    Rule(r"b1\.conv\.weight", "conv1_conv/kernel", "hwio->oihw"),
    Rule(r"b1\.bn\.(?P<kind>\w+)", "conv1_bn/{kind}", kinds=_BN),
    Rule(_BLOCK + r"\.conv(?P<n>\d)\.weight", _STACK + "_{n}_conv/kernel", "hwio->oihw"),
    Rule(_BLOCK + r"\.bn(?P<n>\d)\.(?P<kind>\w+)", _STACK + "_{n}_bn/{kind}", kinds=_BN),
    Rule(_BLOCK + r"\.downsample\.conv\.weight", _STACK + "_0_conv/kernel", "hwio->oihw"),
    Rule(_BLOCK + r"\.downsample\.bn\.(?P<kind>\w+)", _STACK + "_0_bn/{kind}", kinds=_BN),
    Rule(r"last\.fc\.weight", "predictions/kernel", "io->oi"),
    Rule(r"last\.fc\.bias", "predictions/bias"),
)
#: Canonical -> Keras Hub names of a ResNetV2 (``use_pre_activation=True``): the BN before a block's n-th
#: convolution is its ``pre_activation_bn`` (n = 1) or ``_{n-1}_bn``.
RULES_V2 = (
    Rule(r"b1\.conv\.weight", "conv1_conv/kernel", "hwio->oihw"),
    Rule(_BLOCK + r"\.bn1\.(?P<kind>\w+)", _STACK + "_pre_activation_bn/{kind}", kinds=_BN),
    Rule(_BLOCK + r"\.bn(?P<conv>[2-9])\.(?P<kind>\w+)", _STACK + "_{conv0}_bn/{kind}", kinds=_BN),
    Rule(_BLOCK + r"\.conv(?P<n>\d)\.weight", _STACK + "_{n}_conv/kernel", "hwio->oihw"),
    Rule(_BLOCK + r"\.downsample\.conv\.weight", _STACK + "_0_conv/kernel", "hwio->oihw"),
    Rule(r"last\.bn\.(?P<kind>\w+)", "post_bn/{kind}", kinds=_BN),
    Rule(r"last\.fc\.weight", "predictions/kernel", "io->oi"),
    Rule(r"last\.fc\.bias", "predictions/bias"),
)

#: Keras Hub's block types -> this package's block kinds (without the ``preact_`` of ResNetV2).
_BLOCK_TYPES = {"basic_block": "basic", "bottleneck_block": "bottleneck"}


def rules(spec: ModelSpec) -> Sequence[Rule]:
    """ResNetV2's names for a pre-activation model, ResNet's for the others."""
    return RULES_V2 if spec.head.preact else RULES


def check(spec: ModelSpec) -> None:
    """Keras Hub's ResNets: basic or bottleneck blocks (their pre-activation versions in ResNetV2) behind the
    ImageNet stem, no grouped or widened bottlenecks, the stride on the 3x3 convolution."""
    kinds = {"preact_basic", "preact_bottleneck"} if spec.head.preact else {"basic", "bottleneck"}
    check_model("keras-hub", spec, kinds)
    for prefix, block in spec.blocks():
        if getattr(block, "groups", 1) != 1 or getattr(block, "base_width", 64) != 64:
            raise CheckpointMismatchError(
                f"Keras Hub's ResNets have no grouped or widened bottlenecks ({prefix} has groups="
                f"{block.groups}, base_width={block.base_width}); convert to resnet50, resnet101..."
            )
        if getattr(block, "stride_in_1x1", False):
            raise CheckpointMismatchError(
                "Keras Hub's bottlenecks have their stride on the 3x3 convolution (v1.5), not on the first 1x1: "
                "leave stride_in_1x1 unset (--stride-in-1x1 off)"
            )


def describe(arrays: Mapping[str, np.ndarray]) -> str | None:
    """The stages of a Keras-Hub-named checkpoint, in words."""
    found = describe_stages(arrays, r"stack(\d+)_block(\d+)_", r"_3_conv/")
    if found is None:
        if any(name.startswith(("conv2_conv/", "conv3_conv/")) for name in arrays):
            return "a stem of several convolutions (a Keras Hub ResNet_vd, which no model here computes)"
        return None
    preact = any("_pre_activation_bn/" in name for name in arrays)
    return f"{found} ({'ResNetV2, pre-activation' if preact else 'ResNet'})"


# ------------------------------------------------------------------------------------------------ the config


def _backbone_config(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """The ResNetBackbone's arguments in a config.json or task.json (serialized Keras objects)."""
    inner = config.get("config", config)
    backbone = inner.get("backbone")
    if isinstance(backbone, Mapping):  # a task (ResNetImageClassifier) holds its backbone's serialization
        return _backbone_config(backbone)
    return inner


def check_config(config: Mapping[str, Any], task: Mapping[str, Any] | None = None, source: str = "the preset") -> None:
    """CheckpointMismatchError when a ResNetBackbone config (and the classifier's, ``task``) describes a
    network no model here computes: a ``_vd`` variant, other stage strides, another stem, max pooling."""
    cfg = _backbone_config(config)
    class_name = config.get("class_name")
    if class_name not in (None, "ResNetBackbone", "ResNetImageClassifier"):
        raise CheckpointMismatchError(f"{source} holds a Keras Hub {class_name}, not a ResNetBackbone")
    block_type = cfg.get("block_type")
    if block_type not in _BLOCK_TYPES:
        variant = " (ResNet_vd: a deep stem and average-pooled shortcuts)" if str(block_type).endswith("_vd") else ""
        raise CheckpointMismatchError(
            f"{source} has block_type={block_type!r}{variant}; the models here compute Keras Hub's "
            f"{' and '.join(map(repr, _BLOCK_TYPES))} (the resnet_* and resnet_v2_* presets)"
        )
    stem = (list(cfg.get("input_conv_filters", [64])), list(cfg.get("input_conv_kernel_sizes", [7])))
    if len(stem[0]) != 1 or stem[1] != [7]:
        raise CheckpointMismatchError(
            f"{source}'s stem has convolutions {stem[0]} of kernels {stem[1]}; the models here have one 7x7"
        )
    strides = list(cfg.get("stackwise_num_strides", []))
    if strides != [1] + [2] * (len(strides) - 1):
        raise CheckpointMismatchError(
            f"{source} has stage strides {strides}; the models here have 1, then 2 in every later stage"
        )
    head = (task or {}).get("config", task or {})
    if head.get("pooling", "avg") != "avg":
        raise CheckpointMismatchError(f"{source}'s classifier pools with {head['pooling']!r}; the models here average")
    if head.get("activation") not in (None, "linear"):
        warnings.warn(
            f"{source}'s classifier applies {head['activation']!r} to its outputs; the converted model gives "
            "the logits before it",
            stacklevel=3,
        )


def spec_from_config(
    config: Mapping[str, Any], arrays: Mapping[str, np.ndarray], stride_in_1x1: bool = False
) -> ModelSpec:
    """The model a ResNetBackbone config describes, with as many classes as the head ``predictions`` has
    (``arrays``) and the stem kernel's input channels."""
    cfg = _backbone_config(config)
    check_config(config)
    kind = ("preact_" if cfg.get("use_pre_activation") else "") + _BLOCK_TYPES[cfg["block_type"]]
    head = arrays.get("predictions/kernel")
    stem = arrays.get("conv1_conv/kernel")
    if head is None:
        raise CheckpointMismatchError(
            "the checkpoint has no classifier head (predictions/kernel): a ResNetBackbone alone; give a "
            "ResNetImageClassifier preset (task.json and task.weights.h5 beside config.json)"
        )
    return resnet_spec(
        kind,
        tuple(cfg["stackwise_num_blocks"]),
        tuple(cfg["stackwise_num_filters"]),
        num_classes=int(np.shape(head)[-1]),
        in_channels=int(np.shape(stem)[2]) if stem is not None else 3,
        stride_in_1x1=stride_in_1x1,
        stem_channels=int(cfg.get("input_conv_filters", [64])[0]),
    )


def _spec_from(meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray], stride_in_1x1: bool) -> ModelSpec | None:
    config = meta.get("config")
    return spec_from_config(config, arrays, stride_in_1x1) if config else None


def keras_order(config: Mapping[str, Any]) -> dict[str, list[str]]:
    """The names of a ResNetBackbone's convolutions and BatchNorms in the model's layer order, the order a
    ``.weights.h5`` file numbers them (``conv2d``, ``conv2d_1``...): a block's shortcut layers come right before
    its last convolution and its last BN (Keras orders a functional model's layers by their depth)."""
    cfg = _backbone_config(config)
    bottleneck = cfg["block_type"] == "bottleneck_block"
    preact = bool(cfg.get("use_pre_activation"))
    convs, norms = ["conv1_conv"], [] if preact else ["conv1_bn"]
    last = 3 if bottleneck else 2
    for stack, depth in enumerate(cfg["stackwise_num_blocks"]):
        for index in range(depth):
            name = f"stack{stack}_block{index}"
            projection = index == 0 and (bottleneck or stack > 0)
            inner = [f"{name}_{n}" for n in range(1, last)]
            convs += [f"{n}_conv" for n in inner] + [f"{name}_0_conv"] * projection + [f"{name}_{last}_conv"]
            if preact:
                norms += [f"{name}_pre_activation_bn"] + [f"{n}_bn" for n in inner]
            else:
                norms += [f"{n}_bn" for n in inner] + [f"{name}_0_bn"] * projection + [f"{name}_{last}_bn"]
    if preact:
        norms.append("post_bn")
    return {"conv2d": convs, "batch_normalization": norms, "dense": ["predictions"]}


# --------------------------------------------------------------------------------------------- the h5 reader


def _h5py() -> Any:
    try:
        import h5py
    except ImportError as error:
        raise ImportError(
            "reading a Keras .weights.h5 file needs h5py (pip install h5py; it comes with tensorflow and keras)"
        ) from error
    return h5py


def _layer_groups(group: Any, path: str = "") -> Iterator[tuple[str, str, Any]]:
    """(container path, the layer's key in it, its ``vars`` group) for every layer with tensors, depth first."""
    for key in group:
        child = group[key]
        if not hasattr(child, "keys"):
            continue
        if key == "layers":  # a Functional model's (or nested model's) layers
            for layer_key in child:
                vars_group = child[layer_key].get("vars")
                if vars_group is not None and len(vars_group):
                    yield path, layer_key, vars_group
                yield from _layer_groups(child[layer_key], f"{path}layers/{layer_key}/")


def _read_dataset(dataset: Any) -> np.ndarray:
    value = np.asarray(dataset[()])
    if dataset.attrs.get("dtype") == "bfloat16":  # Keras stores bfloat16's 16 bits; float32 holds them exactly
        bits = value.view(np.uint16).astype(np.uint32) << 16
        value = bits.view(np.float32)
    return value


def read_h5_weights(file: Any, source: str, config: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
    """A Keras 3 ``.weights.h5`` file's tensors (an open h5py File or a path) by ``layer/weight`` name.

    Layers are named by the ``name`` attribute Keras 3.6+ records; without it, by their position among the
    layers of their class (``keras_order(config)``), which needs the backbone's config. Tensors of layer classes
    a ResNet does not have keep their file path as their name (so that a mismatch lists them).
    """
    h5py = _h5py()
    if not isinstance(file, h5py.File):
        with h5py.File(file, "r") as opened:
            return read_h5_weights(opened, source, config)
    if "layer_names" in file.attrs or "model_weights" in file:
        raise ValueError(
            f"{source} is a Keras 2 HDF5 file (keras.applications' weights are one), not Keras 3's .weights.h5: "
            "Keras 2 names its layers otherwise (conv2_block1_1_conv...) and its ResNet50 has convolution biases"
        )
    order = keras_order(config) if config else None
    arrays: dict[str, np.ndarray] = {}
    for container, key, group in _layer_groups(file):
        cls = re.sub(r"_\d+$", "", key)
        name = group.attrs.get("name")
        if isinstance(name, bytes):
            name = name.decode()
        if name is None and cls in WEIGHT_NAMES:
            if order is None:
                raise ValueError(
                    f"{source} does not name its layers (Keras before 3.6 saved it): give the preset directory, "
                    "whose config.json says which layer is which"
                )
            position = int(key[len(cls) + 1 :] or 0) if key != cls else 0
            if position >= len(order[cls]):
                raise CheckpointMismatchError(
                    f"{source} has more {cls} layers ({container}layers/{key}) than its config.json describes "
                    f"({len(order[cls])})"
                )
            name = order[cls][position]
        for dataset_key in group:
            dataset = group[dataset_key]
            kinds = WEIGHT_NAMES.get(cls, ())
            index = int(dataset_key) if dataset_key.isdigit() else None
            if name is not None and index is not None and index < len(kinds):
                full = f"{name}/{kinds[index]}"
            else:
                full = f"{container}layers/{key}/vars/{dataset_key}"
            if full in arrays:
                raise ValueError(f"{source} holds two tensors named {full!r}; save it from one Keras model")
            arrays[full] = _read_dataset(dataset)
    return arrays


def _json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def read_keras_hub(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(``layer/weight`` name -> array, meta) of a Keras Hub preset directory, a ``.weights.h5`` file or a
    ``.keras`` archive; ``meta["config"]`` is the backbone's (or task's) config, ``meta["task"]`` the
    classifier's. Refuses configs no model here computes (``check_config``)."""
    file = Path(path)
    source = repr(str(file))
    meta: dict[str, Any] = {"path": str(file)}
    if file.is_dir():
        config, task = _json(file / "config.json"), _json(file / "task.json")
        if config is None and task is None:
            inside = ", ".join(sorted(p.name for p in file.iterdir())[:10]) or "nothing"
            raise FileNotFoundError(f"{source} is not a Keras Hub preset: it has no config.json (it holds {inside})")
        config = config or task
        check_config(config, task, source)
        weights = file / "model.weights.h5"
        if not weights.is_file():
            raise FileNotFoundError(f"{source} has no model.weights.h5 (the backbone's weights)")
        arrays = read_h5_weights(weights, repr(str(weights)), config)
        if (file / "task.weights.h5").is_file():
            head = read_h5_weights(file / "task.weights.h5", repr(str(file / "task.weights.h5")), config)
            arrays.update({k: v for k, v in head.items() if not k.startswith("optimizer/")})
        meta.update(config=config, task=task)
        return arrays, meta
    if not file.is_file():
        raise FileNotFoundError(f"no Keras Hub checkpoint at {source}")
    if file.suffix == ".keras":  # a zip archive: config.json and model.weights.h5
        with zipfile.ZipFile(file) as archive:
            config = json.loads(archive.read("config.json"))
            check_config(config, config if config.get("class_name") != "ResNetBackbone" else None, source)
            h5py = _h5py()
            with h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r") as opened:
                arrays = read_h5_weights(opened, source, config)
        meta["config"] = config
        return arrays, meta
    if not file.name.endswith(".h5"):
        raise ValueError(
            f"{source}: a Keras Hub checkpoint is a preset directory, a .weights.h5 file or a .keras archive"
        )
    return read_h5_weights(file, source), meta


def _options_from(meta: Mapping[str, Any]) -> dict[str, Any]:
    # Keras Hub always strides a bottleneck's 3x3 convolution: a file of it states that much.
    return {"stride_in_1x1": False}


KERAS_HUB = register(
    SourceFormat(
        "keras-hub",
        rules,
        read_keras_hub,
        ignored=(r"optimizer/.*",),
        check=check,
        options_from=_options_from,
        spec_from=_spec_from,
        describe=describe,
        hints=(
            (r"predictions/.*", "a ResNetBackbone has no head: give the ResNetImageClassifier's preset or weights"),
            (r"conv1_bn/.*", "a ResNetV2 (use_pre_activation=True) has no BN in its stem: use preact_resnet*"),
            (r".*_pre_activation_bn/.*", "a ResNet (use_pre_activation=False) has no pre-activation BN: resnet*"),
        ),
    )
)
