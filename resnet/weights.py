"""Framework-neutral weights files: safetensors with canonical names and layouts, readable by every backend.

Canonical names follow the model's description (``b1.conv.weight``, ``b2.0.bn1.running_mean``,
``last.fc.weight``; for a single block ``conv1.weight``...). Canonical layouts are OIHW convolution kernels
and (out, in) dense weights, float32 (float64 from a float64 model; either loads into a model of either
precision, converted). BatchNorm running statistics are included. Loading parses only
tensors and a string-to-string header (safetensors executes nothing) and checks every name, shape and
dtype before any weight is changed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from resnet.api import backend_of
from resnet.atomic import atomic_path

__all__ = ["FORMAT", "WeightsMismatchError", "load_weights", "read_weights", "save_weights", "write_weights"]

#: Written into every file's header, checked on load.
FORMAT = "resnet.neutral/1"
#: The precisions a file may hold: every tensor float64 when saved from a float64 model, else float32.
FILE_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
#: Spatial size used to build a not-yet-built model before loading (parameters do not depend on it).
_BUILD_SIZE = 32


class WeightsMismatchError(ValueError):
    """A weights file does not fit the model: lists missing, unexpected and misshapen tensors."""


def write_weights(arrays: dict[str, np.ndarray], path: str | os.PathLike, metadata: dict[str, str]) -> None:
    """Write canonical arrays to a safetensors file atomically (temporary file, then rename): float64 if they
    all are (a float64 model's), else float32."""
    from safetensors.numpy import save_file

    dtype = np.float64 if all(np.asarray(v).dtype == np.float64 for v in arrays.values()) else np.float32
    tensors = {name: np.ascontiguousarray(value, dtype=dtype) for name, value in arrays.items()}
    with atomic_path(path) as temporary:
        save_file(tensors, str(temporary), metadata={"format": FORMAT, **metadata})


def read_weights(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read a safetensors file: (name -> array, header metadata). Executes nothing from the file."""
    from safetensors import safe_open

    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"no weights file at {str(file)!r}; give the path of a .safetensors file")
    try:
        with safe_open(str(file), framework="numpy") as handle:
            metadata = dict(handle.metadata() or {})
            arrays = {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception as error:
        raise ValueError(f"{str(file)!r} is not a readable safetensors weights file: {error}") from error
    return arrays, metadata


def save_weights(model: Any, path: str | os.PathLike) -> None:
    """Save a built model's weights and BatchNorm statistics to ``path`` in the neutral format."""
    backend = backend_of(model)
    if not backend.is_built(model):
        raise ValueError(
            "this model has no weights yet: its layers are created on first use. Build it first, for example "
            "with resnet.output_shape(model, input_shape), or train it."
        )
    spec = model.spec
    write_weights(
        backend.get_arrays(model),
        path,
        {"backend": backend.NAME, "model": type(model).__name__, "spec": repr(spec)},
    )


def check_arrays(expected: dict[str, np.ndarray], found: dict[str, np.ndarray], source: str) -> None:
    """Raise WeightsMismatchError unless ``found`` has exactly the names and shapes of ``expected``, in float32
    or float64 (converted to the model's precision on assignment)."""
    missing = [name for name in expected if name not in found]
    unexpected = [name for name in found if name not in expected]
    misshapen = [
        f"{name}: file {tuple(found[name].shape)} {found[name].dtype}, "
        f"model {tuple(expected[name].shape)} {expected[name].dtype}"
        for name in expected
        if name in found and (found[name].shape != expected[name].shape or found[name].dtype not in FILE_DTYPES)
    ]
    if missing or unexpected or misshapen:
        lines = [f"{source} does not fit this model:"]
        for title, names in (("missing", missing), ("unexpected", unexpected), ("misshapen", misshapen)):
            if names:
                lines.append(f"  {title} ({len(names)}): " + ", ".join(names))
        lines.append(
            "Load a file saved from the same architecture (same blocks, channels, classes and input channels); "
            "tensors must be float32 or float64 in canonical layouts (OIHW kernels, (out, in) dense)."
        )
        raise WeightsMismatchError("\n".join(lines))


def load_weights(model: Any, path: str | os.PathLike) -> Any:
    """Load a neutral weights file into ``model`` (built first if needed) and return the model.

    Every name, shape and dtype is checked before anything is assigned, so a mismatch leaves the model
    unchanged and raises WeightsMismatchError listing the missing, unexpected and misshapen tensors.
    """
    arrays, metadata = read_weights(path)
    if metadata.get("format") != FORMAT:
        raise ValueError(
            f"{str(path)!r} is a safetensors file but not a {FORMAT} weights file (header format: "
            f"{metadata.get('format')!r}); save weights with resnet.save_weights"
        )
    backend = backend_of(model)
    if not backend.is_built(model):
        backend.build(model, (1, _input_channels(arrays, str(path)), _BUILD_SIZE, _BUILD_SIZE))
    check_arrays(backend.get_arrays(model), arrays, repr(str(path)))
    backend.set_arrays(model, arrays)
    return model


def _input_channels(arrays: dict[str, np.ndarray], source: str) -> int:
    """The input channels the saved model was built for: the second axis of its first kernel."""
    for name in ("b1.conv.weight", "conv1.weight"):
        if name in arrays and arrays[name].ndim == 4:
            return int(arrays[name].shape[1])
    raise WeightsMismatchError(
        f"{source} has neither b1.conv.weight (a ResNet) nor conv1.weight (a block); it was not saved from "
        "a model of this package"
    )
