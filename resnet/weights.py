"""Framework-neutral weights files: safetensors with canonical names and layouts, readable by every backend.

Canonical names follow the model's description (``b1.conv.weight``, ``b2.0.bn1.running_mean``,
``last.fc.weight``; for a single block ``conv1.weight``...). Canonical layouts are OIHW convolution kernels
and (out, in) dense weights, float32 (float64 from a float64 model; either loads into a model of either
precision, converted; integer, bool, complex and float16 tensors are refused). BatchNorm running statistics are
included. Loading parses only tensors and a string-to-string header (safetensors executes nothing) and checks
every name, shape, dtype and value (no NaN or inf) before any weight is changed, so that a failed load leaves
the model as it was, unbuilt if it was unbuilt. A file that cannot be read is named for what it is (empty, cut
short, a pickle, not safetensors at all, a directory), with what to do.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from resnet.api import backend_of
from resnet.atomic import atomic_path
from resnet.preact_layout import old_preact_layout_message
from resnet.shapes import tensor_infos
from resnet.specs import ModelSpec
from resnet.walk import tensors

__all__ = [
    "FORMAT",
    "NoModelDescriptionError",
    "NonFiniteWeightsError",
    "OldPreactLayoutError",
    "WeightsFileError",
    "WeightsMismatchError",
    "check_arrays",
    "check_finite",
    "load_weights",
    "model_description",
    "non_finite",
    "old_preact_layout_message",
    "read_weights",
    "save_weights",
    "write_weights",
]

#: Written into every file's header, checked on load.
FORMAT = "resnet.neutral/1"
#: The precisions a file may hold: every tensor float64 when saved from a float64 model, else float32.
FILE_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
#: Spatial size used to build a not-yet-built model before loading (parameters do not depend on it).
_BUILD_SIZE = 32
#: The header key holding the description of the model a file was saved from (``repr`` of its spec), written
#: by ``save_weights`` and by ``resnet train``'s checkpoints.
MODEL_KEY = "spec"
#: The safetensors dtypes NumPy can hold; a file with others (BF16, F8_*) cannot be read here at all.
_NUMPY_DTYPES = {"BOOL", "U8", "I8", "U16", "I16", "F16", "U32", "I32", "F32", "U64", "I64", "F64", "C64", "C128"}
#: The longest header safetensors reads (its own limit, 100 MB).
_MAX_HEADER = 100_000_000
#: What to do with a pickle renamed .safetensors.
_PICKLE = (
    "it is a pickle/PyTorch .pt file renamed .safetensors: this package never unpickles (unpickling can run any "
    "code in the file); where you trust it, convert it with safetensors: "
    "save_file(torch.load(path, weights_only=True), 'weights.safetensors')"
)
#: The start of the message for every file that cannot be read as safetensors.
_UNREADABLE = "is not a readable safetensors weights file"


class WeightsMismatchError(ValueError):
    """A weights file does not fit the model: lists missing, unexpected and misshapen tensors and wrong dtypes."""


class OldPreactLayoutError(WeightsMismatchError):
    """A weights file of a pre-activation model in the old layout of resnet 0.1.0 (BN and ReLU in the stem,
    ``b1.bn.*``), loaded into a pre-activation model of today's layout, which has none there."""


class WeightsFileError(ValueError):
    """A file cannot be read as a safetensors weights file; the message says what it is and what to do."""


class NonFiniteWeightsError(ValueError):
    """A weights file holds NaN or infinite values; the message names the tensors and counts them."""


class NoModelDescriptionError(ValueError):
    """A weights file's header does not describe the model it was saved from (not written by this package)."""


def write_weights(arrays: dict[str, np.ndarray], path: str | os.PathLike, metadata: dict[str, str]) -> None:
    """Write canonical arrays to a safetensors file atomically (temporary file, then rename): float64 if they
    all are (a float64 model's), else float32. A ``path`` that is a directory, or lies under a file, is refused
    before anything is written."""
    from safetensors.numpy import save_file

    _check_target(path)
    dtype = np.float64 if all(np.asarray(v).dtype == np.float64 for v in arrays.values()) else np.float32
    tensors = {name: np.ascontiguousarray(value, dtype=dtype) for name, value in arrays.items()}
    with atomic_path(path) as temporary:
        save_file(tensors, str(temporary), metadata={"format": FORMAT, **metadata})


def _check_target(path: str | os.PathLike) -> None:
    """Refuse a target the rename could not create: a directory, or a path under a file (raised up front, since
    otherwise the error would name the temporary file, not the path given)."""
    target = Path(path)
    if target.is_dir():
        raise IsADirectoryError(
            f"cannot save weights to {str(target)!r}: it is a directory. Give a file path, e.g. "
            f"{str(target / 'model.safetensors')!r}"
        )
    for parent in target.parents:  # the nearest ancestor that exists must be a directory
        if parent.is_dir():
            return
        if parent.exists():
            raise NotADirectoryError(
                f"cannot save weights to {str(target)!r}: {str(parent)!r} is a file, not a directory. Choose a path "
                "in a directory (one that does not exist yet is created)"
            )


def read_weights(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read a safetensors file: (name -> array, header metadata). Executes nothing from the file.

    Checks no values (a checkpoint with NaNs can still be read, e.g. to inspect it; ``check_finite`` checks
    them, as ``load_weights`` does). A file that cannot be read raises WeightsFileError saying what it is: empty,
    truncated, a pickle, not safetensors; a directory raises IsADirectoryError, a missing file FileNotFoundError.
    """
    from safetensors import safe_open

    file = Path(path)
    if file.is_dir():
        inside = sorted(p.name for p in file.glob("*.safetensors"))
        hint = f"; it holds {', '.join(inside)}" if inside else ""
        raise IsADirectoryError(
            f"{str(file)!r} is a directory, not a weights file{hint}. Give the path of a .safetensors file, e.g. "
            f"{str(file / 'last.safetensors')!r} (what resnet train writes into its --out directory)"
        )
    if not file.is_file():
        raise FileNotFoundError(f"no weights file at {str(file)!r}; give the path of a .safetensors file")
    try:
        with safe_open(str(file), framework="numpy") as handle:
            metadata = dict(handle.metadata() or {})
            arrays = {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception as error:
        raise WeightsFileError(f"{str(file)!r} {_UNREADABLE}: {_what_is_wrong(file) or error}") from error
    return arrays, metadata


def _what_is_wrong(file: Path) -> str | None:
    """What a file safetensors refused is, and what to do; None when that cannot be told (the library's own
    error then says it). safetensors' messages ("header too large") describe the bytes, not the file."""
    try:
        size = file.stat().st_size
        with open(file, "rb") as handle:
            start = handle.read(9)
            length = int.from_bytes(start[:8], "little")
            readable = len(start) == 9 and start[8:] == b"{" and 8 + length <= min(size, _MAX_HEADER)
            handle.seek(8)
            header = handle.read(length) if readable else b""
    except OSError:
        return None
    again = "an interrupted copy or download leaves that (resnet's own saves are atomic): copy or save it again"
    if size == 0:
        return f"it is empty (0 bytes); {again}"
    if start.startswith(b"PK\x03\x04") or (len(start) > 1 and start[0] == 0x80 and 2 <= start[1] <= 5):
        return _PICKLE  # torch.save's zip archive, or a pickle of protocol 2 to 5 (an old torch.save, pickle.dump)
    other = (
        "it is not a safetensors file (random bytes or another format: a safetensors file starts with an 8-byte "
        "header length and a JSON header); give a file written by resnet.save_weights or resnet train"
    )
    if size < 9 or start[8:] != b"{":
        return other if size >= 9 else f"it is {size} bytes long, too short for a safetensors header; {again}"
    if 8 + length > size:
        if length > _MAX_HEADER:  # no header is that long: the first 8 bytes are not a header length
            return other
        return (
            f"it is truncated: its header declares {length} header bytes, but the file has only {size - 8} after "
            f"the length; {again}"
        )
    try:
        entries = json.loads(header)
        ends = [int(entry["data_offsets"][1]) for name, entry in entries.items() if name != "__metadata__"]
        dtypes = {name: str(entry["dtype"]) for name, entry in entries.items() if name != "__metadata__"}
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return f"its header is not valid safetensors JSON (corrupt, or another format); {again}"
    needed = 8 + length + max(ends, default=0)
    if needed > size:
        return (
            f"it is truncated: its header declares a file of {needed} bytes, but it has only {size} "
            f"({needed - size} missing); {again}"
        )
    unreadable = [f"{name}: {dtype}" for name, dtype in dtypes.items() if dtype not in _NUMPY_DTYPES]
    if unreadable:
        return (
            f"it holds tensors in dtypes NumPy cannot represent ({', '.join(unreadable)}); weights files hold "
            "float32 or float64: convert the tensors (in PyTorch, tensor.float()) and save them again"
        )
    return None


def model_description(header: Mapping[str, str], source: str) -> str:
    """The description of the model a file was saved from (``repr`` of its spec), from the header that
    ``read_weights`` returns; NoModelDescriptionError when the header has none.

    ``source`` names the file in the message (e.g. ``repr(str(path))``). ``save_weights`` and ``resnet train``
    write the description; a file from elsewhere (another tool, ``write_weights`` without it) lacks it.
    """
    if MODEL_KEY not in header:
        keys = ", ".join(sorted(header)) or "nothing"
        raise NoModelDescriptionError(
            f"{source} has no model description in its header (it was not written by resnet.save_weights/resnet "
            f"train; its header holds {keys}). Load its weights with resnet.load_weights, which checks every name "
            "and shape instead, or use a file written by resnet.save_weights or resnet train"
        )
    return header[MODEL_KEY]


def save_weights(model: Any, path: str | os.PathLike) -> None:
    """Save a built model's weights and BatchNorm statistics to ``path`` in the neutral format.

    The header holds the format, the backend, the model's class and its description (``model_description``).
    """
    _check_target(path)
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
        {"backend": backend.NAME, "model": type(model).__name__, MODEL_KEY: repr(spec)},
    )


class _Expected(NamedTuple):
    """The shape (None: not known) and dtype a model expects of a tensor, as an array would give them."""

    shape: tuple[int, ...] | None
    dtype: np.dtype


def check_arrays(expected: Mapping[str, Any], found: Mapping[str, np.ndarray], source: str) -> None:
    """Raise WeightsMismatchError unless ``found`` has exactly the names and shapes of ``expected`` (arrays, or
    anything with ``shape`` and ``dtype``; a shape of None is not compared), in float32 or float64 (converted to
    the model's precision on assignment): missing, unexpected and misshapen tensors and wrong dtypes are listed."""
    missing = [name for name in expected if name not in found]
    unexpected = [name for name in found if name not in expected]
    misshapen = [
        f"{name}: file {tuple(found[name].shape)} {found[name].dtype}, "
        f"model {tuple(expected[name].shape)} {np.dtype(expected[name].dtype).name}"
        for name in expected
        if name in found and expected[name].shape is not None and found[name].shape != tuple(expected[name].shape)
    ]
    wrong_dtype = [
        f"{name}: {found[name].dtype}" for name in expected if name in found and found[name].dtype not in FILE_DTYPES
    ]
    if missing or unexpected or misshapen or wrong_dtype:
        old_layout = old_preact_layout_message(source, expected, found, [missing, misshapen, wrong_dtype])
        if old_layout is not None:
            raise OldPreactLayoutError(old_layout)
        lines = [f"{source} does not fit this model:"]
        groups = (
            ("missing", missing),
            ("unexpected", unexpected),
            ("misshapen", misshapen),
            ("wrong dtype", wrong_dtype),
        )
        for title, names in groups:
            if names:
                lines.append(f"  {title} ({len(names)}): " + ", ".join(names))
        dtype = next((np.dtype(value.dtype).name for value in expected.values()), "float32")
        lines.append(
            "Load a file saved from the same architecture (same blocks, channels, classes and input channels); "
            "tensors must be in canonical layouts (OIHW kernels, (out, in) dense) and float32 or float64 (either "
            f"loads, converted to this model's {dtype}); integer, bool, complex and float16 tensors are refused."
        )
        raise WeightsMismatchError("\n".join(lines))


def non_finite(arrays: Mapping[str, np.ndarray]) -> list[str]:
    """The names of the floating-point tensors of ``arrays`` that hold NaN or infinite values, in order."""
    return [
        name
        for name, value in arrays.items()
        if np.asarray(value).dtype.kind in "fc" and not np.isfinite(np.asarray(value)).all()
    ]


def check_finite(arrays: Mapping[str, np.ndarray], source: str) -> None:
    """Raise NonFiniteWeightsError naming every tensor of ``arrays`` that holds NaN or infinite values, with
    their counts, so that a diverged checkpoint never starts a run silently. ``source`` names the file."""
    bad = []
    for name in non_finite(arrays):
        value = np.asarray(arrays[name])
        counts = [
            (int(np.isnan(value).sum()), "NaN"),
            (int(np.isposinf(value.real).sum()), "+inf"),
            (int(np.isneginf(value.real).sum()), "-inf"),
        ]
        bad.append(f"{name}: " + ", ".join(f"{count} {kind}" for count, kind in counts if count))
    if bad:
        raise NonFiniteWeightsError(
            f"{source} was not loaded: {len(bad)} of its {len(arrays)} tensors hold NaN or inf ({'; '.join(bad)}), "
            "and training from them would give NaN losses. The run that wrote it diverged (try a smaller learning "
            "rate) or the file was damaged; use an earlier file, or start without it"
        )


def load_weights(model: Any, path: str | os.PathLike) -> Any:
    """Load a neutral weights file into ``model`` (built first if needed) and return the model.

    Every name, shape, dtype and value is checked before anything is built or assigned, so a failed load leaves
    the model unchanged (an unbuilt model stays unbuilt): WeightsMismatchError lists the missing, unexpected and
    misshapen tensors and wrong dtypes, NonFiniteWeightsError names the tensors holding NaN or inf. float32 and
    float64 files load into a model of either precision, converted to the model's.
    """
    arrays, metadata = read_weights(path)
    source = repr(str(path))
    if metadata.get("format") != FORMAT:
        raise ValueError(
            f"{source} is a safetensors file but not a {FORMAT} weights file (header format: "
            f"{metadata.get('format')!r}); save weights with resnet.save_weights"
        )
    backend = backend_of(model)
    built = backend.is_built(model)
    if built:
        expected: Mapping[str, Any] = backend.get_arrays(model)
    else:
        expected = _expected_unbuilt(model.spec, backend.dtype_of(model), arrays, source)
    check_arrays(expected, arrays, source)
    check_finite(arrays, source)
    if not built:
        backend.build(model, (1, _input_channels(model.spec, arrays), _BUILD_SIZE, _BUILD_SIZE))
    backend.set_arrays(model, arrays)
    return model


def _first_kernel(spec: Any) -> str:
    """The canonical name of the first convolution's kernel, whose second axis is the input's channels."""
    return "b1.conv.weight" if isinstance(spec, ModelSpec) else "conv1.weight"


def _input_channels(spec: Any, arrays: Mapping[str, np.ndarray]) -> int | None:
    """The input channels the saved model was built for (the second axis of its first kernel), or None when
    the file has no such kernel."""
    kernel = arrays.get(_first_kernel(spec))
    return int(kernel.shape[1]) if kernel is not None and kernel.ndim == 4 else None


def _expected_unbuilt(spec: Any, dtype: str, arrays: Mapping[str, np.ndarray], source: str) -> dict[str, _Expected]:
    """What an unbuilt model will hold once built for the file's input channels, from its description alone
    (``resnet.shapes``), so that a file that does not fit is refused before the model is built."""
    channels = _input_channels(spec, arrays)
    if channels is None:  # the first kernel is missing: the names alone already show the mismatch
        return {tensor.name: _Expected(None, np.dtype(dtype)) for tensor in tensors(spec)}
    try:
        infos = tensor_infos(spec, (1, channels, _BUILD_SIZE, _BUILD_SIZE))
    except ValueError as error:  # e.g. a model made for 3 input channels, a file saved for 1
        raise WeightsMismatchError(
            f"{source} does not fit this model: it was saved for {channels} input channels (its "
            f"{_first_kernel(spec)}), and {error}"
        ) from error
    return {name: _Expected(info.shape, np.dtype(dtype)) for name, info in infos.items()}
