"""Reading and writing published checkpoints' files as NumPy arrays by source name, executing nothing.

* ``.safetensors``: safetensors' NumPy reader (a sharded set through its ``.index.json`` too);
* ``.pth``/``.pt``/``.bin``: PyTorch's ``torch.load(..., weights_only=True)`` only, which unpickles tensors and
  containers and refuses code; torch is imported only here, and its absence is an error saying what to do;
* a directory (a Hugging Face model): its ``model.safetensors`` (or ``pytorch_model.bin``) and ``config.json``.

A PyTorch training checkpoint that wraps its weights (``{"state_dict": ...}``, ``{"model": ...}``) is
unwrapped, and ``module.`` prefixes (``DataParallel``) are dropped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from resnet.atomic import atomic_path

__all__ = ["TORCH_SUFFIXES", "read_checkpoint", "read_torch", "write_checkpoint", "write_config"]

#: The suffixes of files read with ``torch.load``.
TORCH_SUFFIXES = (".pth", ".pt", ".bin")
#: The weights files a Hugging Face model directory may hold, in the order they are looked for.
_HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def _torch() -> Any:
    try:
        import torch
    except ImportError as error:
        raise ImportError(
            "reading a PyTorch .pth/.pt/.bin file needs torch (pip install torch), since only torch.load can read "
            "one (this package loads it with weights_only=True, which runs no code). Or convert the file to "
            ".safetensors where torch is installed: safetensors.torch.save_file(torch.load(path, "
            "weights_only=True), 'weights.safetensors')"
        ) from error
    return torch


def _unwrap(state: Any, path: Path) -> dict[str, Any]:
    """The tensors of a loaded PyTorch object: a state dict, or one inside a training checkpoint."""
    for key in ("state_dict", "model", "model_state_dict", "module"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
            break
    if not isinstance(state, Mapping):
        raise ValueError(f"{str(path)!r} holds a {type(state).__name__}, not a state dict of tensors")
    return dict(state)


def read_torch(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A PyTorch file's tensors as NumPy arrays (bfloat16 and float16 as float32, which holds them exactly),
    read with ``torch.load(weights_only=True)``; non-tensor entries are dropped."""
    torch = _torch()
    file = Path(path)
    try:
        state = torch.load(str(file), map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(
            f"{str(file)!r} cannot be read by torch.load(weights_only=True): {error}. A file that needs full "
            "unpickling may run code; convert it to .safetensors where you trust it"
        ) from error
    arrays = {}
    for name, value in _unwrap(state, file).items():
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu()
            if value.dtype in (torch.bfloat16, torch.float16):
                value = value.float()
            arrays[name] = value.numpy()
    return arrays


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a safetensors checkpoint, or of each shard its ``.index.json`` names, read by
    ``resnet.weights.read_weights``: a file that cannot be read is named for what it is (empty, truncated, a
    pickle, tensors in a dtype NumPy lacks such as bfloat16)."""
    from resnet.weights import read_weights

    if path.name.endswith(".index.json"):  # a sharded checkpoint: its index names each tensor's shard
        index = json.loads(path.read_text())
        arrays: dict[str, np.ndarray] = {}
        for shard in sorted(set(index["weight_map"].values())):
            arrays.update(read_weights(path.parent / shard)[0])
        return arrays
    return read_weights(path)[0]


def _strip_module(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    # torch.nn.DataParallel and DistributedDataParallel save every name under "module."
    if arrays and all(name.startswith("module.") for name in arrays):
        return {name[len("module.") :]: value for name, value in arrays.items()}
    return arrays


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(source name -> array, meta) of a checkpoint file or Hugging Face model directory; ``meta["config"]``
    is the directory's parsed config.json, ``meta["path"]`` the weights file read."""
    file = Path(path)
    meta: dict[str, Any] = {}
    if file.is_dir():
        config = file / "config.json"
        if config.is_file():
            meta["config"] = json.loads(config.read_text())
        found = next((file / name for name in _HF_WEIGHTS if (file / name).is_file()), None)
        if found is None:
            inside = ", ".join(sorted(p.name for p in file.iterdir())[:10]) or "nothing"
            raise FileNotFoundError(
                f"{str(file)!r} is a directory without {' or '.join(_HF_WEIGHTS)} (it holds {inside}); give a "
                "Hugging Face model directory or a weights file"
            )
        file = found
    elif not file.is_file():
        raise FileNotFoundError(f"no checkpoint at {str(file)!r}")
    meta["path"] = str(file)
    if file.suffix in TORCH_SUFFIXES:
        arrays = read_torch(file)
    elif file.suffix == ".safetensors" or file.name.endswith(".index.json"):
        arrays = _read_safetensors(file)
    else:
        raise ValueError(
            f"{str(file)!r}: unknown checkpoint file type {file.suffix or '(no suffix)'!r}; give a .safetensors, "
            f"{', '.join(TORCH_SUFFIXES)} file or a Hugging Face model directory"
        )
    return _strip_module(arrays), meta


def write_checkpoint(arrays: Mapping[str, np.ndarray], path: str | os.PathLike, metadata: Mapping[str, str]) -> None:
    """Write source-named arrays atomically: ``.safetensors`` with safetensors (no framework), a PyTorch suffix
    with ``torch.save`` of a state dict (needs torch)."""
    file = Path(path)
    if file.suffix in TORCH_SUFFIXES:
        torch = _torch()
        state = {name: torch.from_numpy(np.asarray(value, order="C")) for name, value in arrays.items()}
        with atomic_path(file) as temporary:
            torch.save(state, str(temporary))
        return
    if file.suffix != ".safetensors":
        raise ValueError(
            f"cannot write {str(file)!r}: give a .safetensors file (or {', '.join(TORCH_SUFFIXES)}, with torch)"
        )
    from safetensors.numpy import save_file

    with atomic_path(file) as temporary:
        # np.asarray, not np.ascontiguousarray, which makes the 0-d step counters 1-d
        save_file({k: np.asarray(v, order="C") for k, v in arrays.items()}, str(temporary), metadata=dict(metadata))


def write_config(config: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write a JSON config file atomically."""
    with atomic_path(path) as temporary:
        Path(temporary).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
