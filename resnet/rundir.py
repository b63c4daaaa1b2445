"""A run directory's files, and the rules that keep them one consistent state through kills and reruns.

A run directory holds:

* ``last.safetensors``: the neutral weights after the last complete epoch. Its header holds the run's
  settings, the epoch and every epoch's metrics row: it is the run's single commit point. It is written
  atomically, so after a kill at any instant it is either the previous epoch's or the new one's;
* ``metrics.csv``: one row per epoch (epoch, train_loss, val_loss, val_acc, images_per_s, dataset);
* ``curves.png``: training loss, validation loss and validation accuracy per epoch, as the book plots them;
* ``run.json``: the settings (typed), the device, the dataset actually used, and ``epochs_complete``.

metrics.csv, curves.png and run.json are views of the checkpoint, written after it. A kill between the
checkpoint and them leaves them one epoch behind; ``--resume`` rewrites them from the checkpoint first, so
a run's final metrics.csv has every epoch exactly once. A directory holds one run: a new run into a
directory that holds one is refused unless told to continue it (resume) or replace it (overwrite).
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from resnet.atomic import atomic_path
from resnet.faults import fault_point
from resnet.runlock import OWNER
from resnet.walk import tensors
from resnet.weights import (
    OldPreactLayoutError,
    non_finite,
    old_preact_layout_message,
    read_weights,
    write_weights,
)

__all__ = [
    "CHECKPOINT",
    "COLUMNS",
    "CURVES",
    "METRICS",
    "RUN_FILES",
    "RUN_INFO",
    "RunExistsError",
    "check_out_dir",
    "commit_epoch",
    "describe_run",
    "new_run_directory",
    "plot_curves",
    "point_latest",
    "prepare_new_run",
    "read_metrics",
    "remove_temporaries",
    "resume_point",
    "run_settings",
    "write_metrics",
    "write_run_info",
]

CHECKPOINT = "last.safetensors"
METRICS = "metrics.csv"
CURVES = "curves.png"
RUN_INFO = "run.json"
RUN_FILES = (CHECKPOINT, METRICS, CURVES, RUN_INFO)
COLUMNS = ("epoch", "train_loss", "val_loss", "val_acc", "images_per_s", "dataset")
#: Settings added after the first checkpoints were written, with the value those runs had: such a checkpoint
#: resumes as long as the run keeps that value.
IMPLIED_SETTINGS = {
    "dtype": "float32",
    "mixed_precision": "False",
    "max_train_examples": "None",
    "max_val_examples": "None",
}


class RunExistsError(ValueError):
    """A new run was asked for in a directory that holds one."""


def check_out_dir(path: str | os.PathLike) -> Path:
    """``path`` as a run directory that can be created or written, checked without creating anything:
    ValueError for an empty path or an existing non-directory, OSError naming the unwritable directory."""
    text = os.fspath(path)
    if not str(text).strip():
        raise ValueError("--out is empty: give the run directory, e.g. --out runs/first")
    directory = Path(text)
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"--out {str(directory)!r} is a file, not a directory; choose a directory (it is created)")
    existing = directory
    while not existing.exists():  # the nearest ancestor that exists must be a writable directory
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"--out {str(directory)!r}: {str(existing)!r} is a file, so the directory cannot be created")
    try:  # a real probe, which permission bits alone cannot be (root, read-only mounts, /proc): nothing stays
        os.rmdir(tempfile.mkdtemp(prefix=".resnet-probe-", dir=existing))
    except OSError as error:
        raise OSError(
            f"the output directory {str(directory)!r} is not writable ({str(existing)!r}: "
            f"{error.strerror}); choose another with --out"
        ) from None
    return directory


def describe_run(directory: Path) -> str | None:
    """``resnet18 in torch, 2 of 10 epochs complete`` for a directory holding a run, else None."""
    if not any((directory / name).exists() for name in RUN_FILES):
        return None
    try:
        info = json.loads((directory / RUN_INFO).read_text())
        done = info.get("epochs_complete", "?")
        model, backend, epochs = (info.get(key, "?") for key in ("model", "backend", "epochs"))
        return f"{model} in {backend}, {done} of {epochs} epochs complete"
    except (OSError, ValueError, AttributeError):
        return "its files: " + ", ".join(name for name in RUN_FILES if (directory / name).exists())


def prepare_new_run(directory: Path, overwrite: bool) -> None:
    """Refuse (RunExistsError) a new run into a directory holding one, unless ``overwrite``: then remove
    the old run's files first."""
    described = describe_run(directory)
    if described is None:
        return
    if not overwrite:
        raise RunExistsError(
            f"{directory} already holds a run ({described}). Continue it with --resume (fit(resume=True)), "
            "replace it with --overwrite (fit(overwrite=True)), or choose another --out directory"
        )
    for name in RUN_FILES:
        (directory / name).unlink(missing_ok=True)


def remove_temporaries(directory: Path) -> list[str]:
    """Remove the temporary files that killed atomic writes of this run's files left (call it holding the
    run's lock, so that no live write's file is taken); returns their names."""
    removed = []
    for name in (*RUN_FILES, OWNER):
        for temporary in directory.glob(f".{name}.*.tmp"):
            temporary.unlink(missing_ok=True)
            removed.append(temporary.name)
    return removed


def new_run_directory(root: str | os.PathLike, model: str, backend: str) -> Path:
    """A path for a new run under ``root`` that does not exist yet: ``root/resnet18-torch-20261201-201500``
    (``-2``, ``-3``... when that exists). Nothing is created."""
    stem = f"{model}-{backend}-{time.strftime('%Y%m%d-%H%M%S')}"
    candidate, number = Path(root) / stem, 1
    while candidate.exists():
        number += 1
        candidate = Path(root) / f"{stem}-{number}"
    return candidate


def point_latest(link: Path, target: Path) -> bool:
    """Point the symbolic link ``link`` (``runs/latest``) at ``target`` atomically; False, changing nothing,
    where ``link`` is a real directory or file (an older version's run) or links cannot be made."""
    if (link.exists() and not link.is_symlink()) or os.path.realpath(target) == os.path.realpath(link):
        return False
    temporary = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    try:
        temporary.unlink(missing_ok=True)
        os.symlink(os.path.relpath(target, link.parent), temporary)
        os.replace(temporary, link)
    except OSError:
        temporary.unlink(missing_ok=True)
        return False
    return True


def write_metrics(rows: list[dict[str, Any]], path: Path) -> None:
    """metrics.csv: a header and one row per epoch, written atomically."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    with atomic_path(path) as temporary:
        temporary.write_text(text.getvalue())


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of a metrics.csv, typed; ValueError naming the file and line of a bad value."""
    numeric = {"epoch": int, "train_loss": float, "val_loss": float, "val_acc": float, "images_per_s": float}
    with open(path, newline="") as handle:
        rows = []
        for line, row in enumerate(csv.DictReader(handle), start=2):
            try:
                rows.append({k: numeric.get(k, str)(v) for k, v in row.items()})
            except (TypeError, ValueError) as error:
                raise ValueError(
                    f"{path}, line {line}: {error}; the file is damaged. Start a new run (--overwrite or another --out)"
                ) from None
    return rows


def plot_curves(rows: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """The book's figure: train loss, validation loss and validation accuracy against the epoch, as a PNG."""
    # A bare Figure, not pyplot: writing the file must not change the plotting backend of a notebook.
    from matplotlib.figure import Figure

    epochs = [row["epoch"] for row in rows]
    figure = Figure(figsize=(5, 3.5))
    axes = figure.subplots()
    axes.plot(epochs, [row["train_loss"] for row in rows], "-", label="train_loss")
    axes.plot(epochs, [row["val_loss"] for row in rows], "--", label="val_loss")
    axes.plot(epochs, [row["val_acc"] for row in rows], "-.", label="val_acc")
    axes.set_xlabel("epoch")
    axes.set_xlim(0.5, max(epochs, default=1) + 0.5)
    axes.grid(alpha=0.3)
    axes.legend()
    if title:
        axes.set_title(title, fontsize=9)
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=100)


def run_settings(
    config: Any, lr: float, dataset: str, model: str, backend: str, dtype: str, mixed_precision: bool
) -> dict[str, Any]:
    """The settings a resumed run must keep, typed (run.json stores them so; a checkpoint's header as text)."""
    return {
        **{k: v for k, v in asdict(config).items() if k != "epochs"},
        "lr": lr,
        "dataset": dataset,
        "model": model,
        "dtype": dtype,
        "mixed_precision": bool(mixed_precision),
        "backend": backend,
    }


def _same_setting(saved: str | None, value: Any) -> bool:
    """Whether a checkpoint header's text ``saved`` is the setting ``value``: numbers compare as numbers
    ("0.05" and 0.05, "1" and 1.0), booleans as booleans, so that headers of every version compare right."""
    if saved is None:
        return False
    if isinstance(value, bool):
        return saved.strip().lower() == str(value).lower()
    if isinstance(value, (int, float)):
        try:
            return float(saved) == float(value)
        except ValueError:
            return False
    return saved == str(value)


def resume_point(
    directory: Path, spec: Any, settings: dict[str, Any]
) -> tuple[dict[str, np.ndarray], int, list[dict[str, Any]]]:
    """The checkpoint's weights, its last complete epoch and the metrics rows up to it, after checking that
    it belongs to this run. Older checkpoints, without rows in their header, take them from metrics.csv."""
    path = directory / CHECKPOINT
    arrays, header = read_weights(path)
    if "spec" not in header or "epoch" not in header:
        raise ValueError(
            f"{path} has no run settings in its header: it was not written by resnet train. A weights file "
            "starts a new run with --init FILE (fit(init=...)), not --resume"
        )
    if header["spec"] != repr(spec):
        names = [tensor.name for tensor in tensors(spec)]
        old_layout = old_preact_layout_message(str(path), names, arrays, [[n for n in names if n not in arrays]])
        if old_layout is not None:
            # Its spec differs because the stem changed, not because another --model was given.
            raise OldPreactLayoutError(
                f"{old_layout}\nSo this run cannot be resumed: start a new one, with --overwrite "
                "(fit(overwrite=True)) or another --out."
            )
        raise ValueError(
            f"{path} was saved from a different model ({header.get('model', '?')}); resume with the same --model, "
            "or choose another --out directory"
        )
    saved = {**IMPLIED_SETTINGS, **header}
    changed = [
        f"{k}: {saved.get(k)} -> {v}"
        for k, v in settings.items()
        if k != "backend" and not _same_setting(saved.get(k), v)
    ]
    if changed:
        raise ValueError(
            f"{path} was trained with other settings ({'; '.join(changed)}); resume with the same settings, or start "
            "a new run in another --out directory"
        )
    done = int(header["epoch"])
    if "metrics" in header:
        rows = json.loads(header["metrics"])
    elif (directory / METRICS).is_file():
        rows = [row for row in read_metrics(directory / METRICS) if row["epoch"] <= done]
    else:
        rows = []
    return arrays, done, rows


def write_run_info(directory: Path, info: dict[str, Any], epochs_complete: int) -> None:
    """run.json, atomically: ``info`` (settings, device, dataset note) and the epochs complete."""
    with atomic_path(directory / RUN_INFO) as temporary:
        temporary.write_text(json.dumps({**info, "epochs_complete": epochs_complete}, indent=2) + "\n")


def commit_epoch(
    directory: Path,
    arrays: dict[str, np.ndarray],
    header: dict[str, str],
    rows: list[dict[str, Any]],
    info: dict[str, Any],
    title: str,
) -> None:
    """Write an epoch's state: first the checkpoint, with the rows in its header (the commit point), then
    the views metrics.csv, curves.png and run.json. Non-finite weights are never written."""
    bad = non_finite(arrays)
    if bad:
        raise FloatingPointError(
            f"the weights after epoch {rows[-1]['epoch']} are not finite ({len(bad)} tensors, e.g. {bad[0]}); they "
            f"were not saved, and {directory / CHECKPOINT} keeps the last good epoch. Lower the learning rate"
        )
    write_weights(arrays, directory / CHECKPOINT, {**header, "metrics": json.dumps(rows)})
    fault_point("after-checkpoint")
    write_metrics(rows, directory / METRICS)
    fault_point("after-metrics")
    plot_curves(rows, directory / CURVES, title)
    write_run_info(directory, info, rows[-1]["epoch"])
    fault_point("epoch-end")
