"""Hugging Face transformers' ResNet checkpoints (``ResNetForImageClassification``, ``ResNetModel``): a
directory with ``config.json`` and ``model.safetensors`` (or ``pytorch_model.bin``), as ``save_pretrained``
writes it and the Hub serves it (``microsoft/resnet-50``...).

Names: the stem ``resnet.embedder.embedder.convolution``/``.normalization``; the stages
``resnet.encoder.stages.0``... of ``layers.0``..., each block's convolutions and BNs ``layer.0``, ``layer.1``...
(``.convolution``, ``.normalization``) and a projection shortcut ``shortcut.convolution``/``.normalization``; the
head ``classifier.1``. A ``ResNetModel`` has the same names without ``resnet.`` and no head.

config.json describes the model: ``layer_type`` (basic or bottleneck), ``depths``, ``hidden_sizes`` (each
stage's output channels), ``embedding_size`` (the stem's), ``num_channels`` (the input's), and
``downsample_in_bottleneck``: True puts a bottleneck's stride on its first 1x1 convolution, the paper's
placement (``stride_in_1x1=True``; Microsoft's published ResNets have it), False on the 3x3 (v1.5).
transformers' ResNet has no grouped convolutions and no pre-activation blocks.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from resnet.checkpoints.mapping import CheckpointMismatchError, Rule, SourceFormat, register
from resnet.checkpoints.model_checks import block_kinds, check_model, describe_stages
from resnet.checkpoints.readers import read_checkpoint, write_checkpoint, write_config
from resnet.specs import EXPANSION, BottleneckSpec, ModelSpec, resnet_spec

__all__ = ["TRANSFORMERS", "config_for", "spec_from_config"]

_BLOCK = r"b(?P<stage>\d+)\.(?P<block>\d+)"
_LAYER = "resnet.encoder.stages.{stage0}.layers.{block}"
RULES = (
    Rule(r"b1\.conv\.(?P<kind>weight)", "resnet.embedder.embedder.convolution.{kind}"),
    Rule(r"b1\.bn\.(?P<kind>\w+)", "resnet.embedder.embedder.normalization.{kind}"),
    Rule(_BLOCK + r"\.conv(?P<conv>\d)\.(?P<kind>weight)", _LAYER + ".layer.{conv0}.convolution.{kind}"),
    Rule(_BLOCK + r"\.bn(?P<conv>\d)\.(?P<kind>\w+)", _LAYER + ".layer.{conv0}.normalization.{kind}"),
    Rule(_BLOCK + r"\.downsample\.conv\.(?P<kind>weight)", _LAYER + ".shortcut.convolution.{kind}"),
    Rule(_BLOCK + r"\.downsample\.bn\.(?P<kind>\w+)", _LAYER + ".shortcut.normalization.{kind}"),
    Rule(r"last\.fc\.(?P<kind>\w+)", "classifier.1.{kind}"),
)
_HEAD = "classifier.1.weight"


def read(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A model directory's (or weights file's) tensors, a ``ResNetModel``'s named as in
    ``ResNetForImageClassification``, and its config.json as ``meta["config"]``."""
    arrays, meta = read_checkpoint(path)
    if arrays and not any(name.startswith("resnet.") for name in arrays):
        arrays = {(name if name.startswith("classifier.") else f"resnet.{name}"): v for name, v in arrays.items()}
    return arrays, meta


def _config(meta: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The checked config.json of a checkpoint, or None when it came without one."""
    config = meta.get("config")
    if config is None:
        return None
    problems = []
    if config.get("model_type", "resnet") != "resnet":
        problems.append(f"model_type is {config.get('model_type')!r}, not 'resnet'")
    if config.get("hidden_act", "relu") != "relu":
        problems.append(f"hidden_act is {config.get('hidden_act')!r}; the models here use ReLU")
    if config.get("downsample_in_first_stage", False):
        problems.append("downsample_in_first_stage is true (a stride-2 first stage); the models here have stride 1")
    if config.get("layer_type", "bottleneck") not in ("basic", "bottleneck"):
        problems.append(f"layer_type is {config.get('layer_type')!r}, not 'basic' or 'bottleneck'")
    if problems:
        raise CheckpointMismatchError(
            f"{meta.get('path', 'the checkpoint')}'s config.json describes a model these models cannot be: "
            + "; ".join(problems)
        )
    return config


def options_from(meta: Mapping[str, Any]) -> dict[str, Any]:
    """``stride_in_1x1`` from config.json's ``downsample_in_bottleneck`` (nothing without a config)."""
    config = _config(meta)
    if config is None or config.get("layer_type", "bottleneck") != "bottleneck":
        return {}
    return {"stride_in_1x1": bool(config.get("downsample_in_bottleneck", False))}


def spec_from_config(config: Mapping[str, Any], num_classes: int | None = None) -> ModelSpec:
    """The model a transformers ``ResNetConfig`` (a parsed config.json) describes, with ``num_classes``
    outputs (None: its ``id2label``'s, else ``num_labels``)."""
    bottleneck = config.get("layer_type", "bottleneck") == "bottleneck"
    sizes = [int(size) for size in config["hidden_sizes"]]
    if num_classes is None:
        num_classes = len(config["id2label"]) if "id2label" in config else int(config.get("num_labels", 2))
    return resnet_spec(
        "bottleneck" if bottleneck else "basic",
        [int(depth) for depth in config["depths"]],
        [size // EXPANSION for size in sizes] if bottleneck else sizes,
        num_classes=num_classes,
        in_channels=int(config.get("num_channels", 3)),
        stride_in_1x1=bottleneck and bool(config.get("downsample_in_bottleneck", False)),
        stem_channels=int(config.get("embedding_size", 64)),
    )


def spec_from(meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray], stride_in_1x1: bool) -> ModelSpec | None:
    """The model a checkpoint's config.json describes, its classes from the head's kernel, its stride
    placement ``stride_in_1x1``; None without a config."""
    config = _config(meta)
    if config is None:
        return None
    head = arrays.get(_HEAD)
    config = {**config, "downsample_in_bottleneck": stride_in_1x1}
    return spec_from_config(config, None if head is None else int(np.shape(head)[0]))


def check(spec: ModelSpec) -> None:
    """transformers' ResNet: basic or bottleneck blocks without groups, behind the ImageNet stem."""
    check_model("transformers", spec, {"basic", "bottleneck"})
    grouped = [block for _, block in spec.blocks() if isinstance(block, BottleneckSpec) and block.width != block.planes]
    if grouped:
        raise CheckpointMismatchError(
            "transformers' ResNet has no grouped or widened bottlenecks (ResNeXt, wide ResNets): its bottleneck "
            "width is a quarter of the output channels"
        )


def config_for(spec: ModelSpec) -> dict[str, Any]:
    """The config.json of ``ResNetForImageClassification`` for ``spec``."""
    check(spec)
    stages = [blocks for _, blocks in spec.stages]
    bottleneck = "bottleneck" in block_kinds(spec)
    first = stages[0][0]
    labels = {str(i): f"LABEL_{i}" for i in range(spec.head.num_classes)}
    return {
        "architectures": ["ResNetForImageClassification"],
        "model_type": "resnet",
        "num_channels": spec.stem.in_channels or 3,
        "embedding_size": spec.stem.channels,
        "hidden_sizes": [blocks[0].num_channels for blocks in stages],
        "depths": [len(blocks) for blocks in stages],
        "layer_type": "bottleneck" if bottleneck else "basic",
        "hidden_act": "relu",
        "downsample_in_first_stage": False,
        "downsample_in_bottleneck": bool(bottleneck and first.stride_in_1x1),
        "id2label": labels,
        "label2id": {label: int(i) for i, label in labels.items()},
    }


def write(arrays: dict, spec: ModelSpec, path: str | os.PathLike) -> None:
    """A model directory (model.safetensors and config.json) that
    ``ResNetForImageClassification.from_pretrained`` loads."""
    directory = Path(path)
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"{str(directory)!r} is a file; a transformers model is a directory: give a new one")
    config = config_for(spec)
    directory.mkdir(parents=True, exist_ok=True)
    write_checkpoint(arrays, directory / "model.safetensors", {"format": "pt"})
    write_config(config, directory / "config.json")


def describe(arrays: dict) -> str | None:
    """The stages of a transformers-named checkpoint, in words."""
    return describe_stages(arrays, r"resnet\.encoder\.stages\.(\d+)\.layers\.(\d+)\.", r"\.layer\.2\.")


TRANSFORMERS = register(
    SourceFormat(
        "transformers",
        RULES,
        read,
        write,
        ignored=(r".*\.num_batches_tracked",),
        check=check,
        options_from=options_from,
        spec_from=spec_from,
        describe=describe,
        hints=(
            (
                r"classifier\.1\..*",
                "It has no classification head: a ResNetModel (the backbone alone), not a "
                "ResNetForImageClassification; convert one with a head.",
            ),
        ),
        export_counter="num_batches_tracked",
    )
)
