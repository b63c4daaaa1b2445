"""Published ResNet checkpoints to this package's neutral weights files, and back, without a framework.

    arrays, spec = import_weights("resnet50.pth", "torchvision", "resnet50")     # canonical arrays
    convert("resnet-50/", "transformers", None, "resnet50.safetensors")          # the model from config.json
    resnet.load_weights(resnet.resnet50(stride_in_1x1=True), "resnet50.safetensors")
    export_weights("resnet50.safetensors", "timm", "resnet50_timm.safetensors")

Formats (``FORMATS``): ``torchvision`` and ``timm`` state dict files (``.safetensors``, or ``.pth``/``.pt``/``.bin``
read with ``torch.load(weights_only=True)`` where torch is installed), ``transformers`` model directories
(config.json and model.safetensors), and ``keras-hub`` presets where its module is installed. Each is a table of
names and layout conversions (``resnet.checkpoints.mapping``); a checkpoint that does not fit the model asked
for raises ``CheckpointMismatchError``, naming the model it looks like.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path

import numpy as np

from resnet.checkpoints import timm, torchvision, transformers  # noqa: F401  (they register their formats)
from resnet.checkpoints.mapping import (
    ARCHITECTURES,
    FORMATS,
    CheckpointMismatchError,
    Rule,
    SourceFormat,
    architecture_spec,
    checkpoint_sizes,
    from_canonical,
    get_format,
    parse_spec,
    to_canonical,
)
from resnet.specs import ModelSpec

# Keras Hub's table (helper C2's module): until it is there, the other formats work.
if importlib.util.find_spec("resnet.checkpoints.keras_hub") is not None:
    from resnet.checkpoints import keras_hub  # noqa: F401

__all__ = [
    "ARCHITECTURES",
    "FORMATS",
    "CheckpointMismatchError",
    "Rule",
    "SourceFormat",
    "architecture_spec",
    "convert",
    "export_weights",
    "from_canonical",
    "import_weights",
    "to_canonical",
]


def _stride(fmt: SourceFormat, meta: dict, stride_in_1x1: bool | None, source: str) -> bool:
    """The stride placement: as asked, else as the files state it, else torchvision's (on the 3x3)."""
    stated = fmt.options_from(meta).get("stride_in_1x1")
    if stride_in_1x1 is None:
        return bool(stated)
    if stated is not None and bool(stated) != bool(stride_in_1x1):
        warnings.warn(
            f"{source}'s files put the bottlenecks' stride on the {'first 1x1' if stated else '3x3'} convolution, "
            f"but stride_in_1x1={stride_in_1x1} was asked for: the converted model will compute something else",
            stacklevel=3,
        )
    return bool(stride_in_1x1)


def _sizes(fmt: SourceFormat, name: str, arrays: dict, stride_in_1x1: bool) -> dict[str, int]:
    try:
        return checkpoint_sizes(fmt, name, arrays, stride_in_1x1=stride_in_1x1)
    except CheckpointMismatchError:
        return {}  # the format cannot hold the model: to_canonical says so


def import_weights(
    source: str | os.PathLike,
    fmt: str,
    model_name: str | ModelSpec | None,
    *,
    num_classes: int | None = None,
    stride_in_1x1: bool | None = None,
) -> tuple[dict[str, np.ndarray], ModelSpec]:
    """Read a published checkpoint and return (canonical arrays, the model's description).

    Args:
        source: the checkpoint file, or a Hugging Face model directory.
        fmt: a key of ``FORMATS``: ``"torchvision"``, ``"timm"``, ``"transformers"``, ``"keras-hub"``.
        model_name: the architecture (a key of ``ARCHITECTURES``: ``"resnet50"``...), a ModelSpec, or None to
            take it from the files where they describe it (transformers' config.json).
        num_classes: the head's outputs (None: as many as the checkpoint's head has).
        stride_in_1x1: where a bottleneck's stride sits (None: as the files say, else on the 3x3 convolution,
            torchvision's "v1.5"; a torchvision or timm file cannot tell).
    """
    fmt_ = get_format(fmt)
    name = repr(str(source))
    arrays, meta = fmt_.read(source)
    stride = _stride(fmt_, meta, stride_in_1x1, name)
    if isinstance(model_name, ModelSpec):
        spec = model_name
    elif model_name is None:
        spec = fmt_.spec_from(meta, arrays, stride) if fmt_.spec_from else None
        if spec is None:
            raise ValueError(
                f"{name}: {fmt_.name} files do not say which model they hold; give the model (--model), one of "
                f"{', '.join(ARCHITECTURES)}"
            )
        if num_classes is not None and num_classes != spec.head.num_classes:
            raise ValueError(f"{name} has {spec.head.num_classes} classes, not num_classes={num_classes}")
    else:
        sizes = _sizes(fmt_, model_name, arrays, stride)
        spec = architecture_spec(
            model_name,
            num_classes=sizes.get("num_classes", 1000) if num_classes is None else num_classes,
            in_channels=sizes.get("in_channels", 3),
            stride_in_1x1=stride,
        )
    from resnet.weights import check_finite

    canonical = to_canonical(arrays, fmt_, spec, source=name)
    check_finite(canonical, name)
    return canonical, spec


def convert(
    source: str | os.PathLike,
    fmt: str,
    model_name: str | ModelSpec | None,
    out_path: str | os.PathLike,
    *,
    num_classes: int | None = None,
    stride_in_1x1: bool | None = None,
) -> ModelSpec:
    """Convert a published checkpoint (``import_weights``' arguments) to a neutral weights file at ``out_path``
    that ``resnet.load_weights`` loads into the model; returns the model's description. The header holds the
    description, as ``resnet.save_weights`` writes it, and where the weights came from."""
    from resnet.weights import MODEL_KEY, write_weights

    arrays, spec = import_weights(source, fmt, model_name, num_classes=num_classes, stride_in_1x1=stride_in_1x1)
    label = model_name if isinstance(model_name, str) else "ResNet"
    header = {"model": label, MODEL_KEY: repr(spec), "source": str(source), "source_format": get_format(fmt).name}
    write_weights(arrays, out_path, header)
    return spec


def export_weights(neutral_path: str | os.PathLike, fmt: str, out_path: str | os.PathLike) -> ModelSpec:
    """Write a neutral weights file (``resnet.save_weights``, ``resnet train``, ``convert``) as a ``fmt``
    checkpoint at ``out_path``: a ``.safetensors`` or ``.pth`` state dict for torchvision and timm, a model
    directory for transformers. Returns the model's description (from the file's header)."""
    from resnet.weights import FORMAT, model_description, read_weights

    fmt_ = get_format(fmt)
    if fmt_.write is None:
        raise ValueError(f"the {fmt_.name} format can be read, not written; export to one of {_writable()}")
    arrays, header = read_weights(neutral_path)
    source = repr(str(neutral_path))
    if header.get("format") != FORMAT:
        raise ValueError(f"{source} is not a {FORMAT} weights file (header format: {header.get('format')!r})")
    spec = parse_spec(model_description(header, source))
    fmt_.write(from_canonical(arrays, fmt_, spec), spec, out_path)
    return spec


def _writable() -> str:
    return ", ".join(name for name, fmt in FORMATS.items() if fmt.write is not None)


def run_convert(
    source: str,
    out: str,
    from_: str | None,
    to: str | None,
    model: str | None,
    num_classes: int | None = None,
    stride_in_1x1: bool | None = None,
) -> str:
    """``resnet convert``: import (``from_``) or export (``to``) one file; returns the line it prints."""
    if (from_ is None) == (to is None):
        raise ValueError("give --from FORMAT (a published checkpoint -> ours) or --to FORMAT (ours -> a format)")
    if to is not None:
        if model is not None or num_classes is not None or stride_in_1x1 is not None:
            raise ValueError(
                "--model, --num-classes and --stride-in-1x1 are for --from: --to takes the model from the file's header"
            )
        spec = export_weights(source, to, out)
        return f"wrote {out}: {get_format(to).name} weights of {_describe(spec)}"
    spec = convert(source, from_, model, out, num_classes=num_classes, stride_in_1x1=stride_in_1x1)
    target = Path(out)
    return (
        f"wrote {target}: {_describe(spec)}, from the {get_format(from_).name} checkpoint {source}; load it with "
        f"resnet.load_weights(model, {str(target)!r})"
    )


def _describe(spec: ModelSpec) -> str:
    """``resnet50-like: 16 bottleneck blocks, 1000 classes, stride on the 3x3 (v1.5)``."""
    blocks = [block for _, block in spec.blocks()]
    kinds = sorted({block.kind for block in blocks})
    text = f"{len(blocks)} {'/'.join(kinds)} blocks {tuple(len(b) for _, b in spec.stages)}, "
    text += f"{spec.head.num_classes} classes, {spec.stem.in_channels or 3} input channels"
    if "bottleneck" in kinds or "preact_bottleneck" in kinds:
        paper = getattr(blocks[0], "stride_in_1x1", False)
        text += ", stride on the first 1x1 (v1)" if paper else ", stride on the 3x3 (v1.5)"
    return text
