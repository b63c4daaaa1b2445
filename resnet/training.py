"""Training the chapter's recipe: one loop for every backend, around each backend's own fast train step.

The loop, the metrics, the checkpoints and the plot are framework-free; the backend supplies
``make_train_step`` (jit in JAX, tf.function in TensorFlow, a hybridized block in MXNet, eager or
torch.compile in PyTorch) and ``make_predict``. The loop never makes the framework wait: the next batch is
resized in a background thread while a step runs, and each step's loss is read only after the next step
has been queued. The model trains on the GPU when its framework sees one (``backend.to_accelerator``). A run
directory holds:

* ``metrics.csv``: one row per epoch (epoch, train_loss, val_loss, val_acc, images_per_s, dataset);
* ``curves.png``: training loss, validation loss and validation accuracy per epoch, as the book plots them;
* ``last.safetensors``: the neutral weights after the last complete epoch, with the run's settings in its
  header, from which ``resume=True`` continues with the same result as an uninterrupted run;
* ``run.json``: the settings (typed: numbers, booleans, strings), the learning rate used, the device, and the
  dataset actually used (with a warning, and one line per file saying why, when it is the offline set).

The learning rate is the book's: ``TrainConfig(lr=None)`` (the default) trains with the model's own
``model.lr`` (``ResNet18(lr=0.01)`` in the chapter's recipe); a number there overrides it.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from resnet.api import backend_of
from resnet.atomic import atomic_path
from resnet.contract import learning_rate_of
from resnet.data import Batches, Dataset, prefetch
from resnet.init import initial_weights
from resnet.parallel import Plan, check_global_batch
from resnet.reference import softmax_cross_entropy
from resnet.specs import learning_rate
from resnet.weights import check_arrays, load_weights, read_weights, write_weights

__all__ = ["CHECKPOINT", "METRICS", "History", "TrainConfig", "evaluate", "fit"]

CHECKPOINT = "last.safetensors"
METRICS = "metrics.csv"
CURVES = "curves.png"
RUN_INFO = "run.json"
COLUMNS = ("epoch", "train_loss", "val_loss", "val_acc", "images_per_s", "dataset")


@dataclass(frozen=True)
class TrainConfig:
    """The recipe: the book's defaults are 10 epochs, batch 128, SGD, 96x96 images.

    ``lr`` is the SGD learning rate; None (the default) means the model's own ``model.lr``, as the book's
    trainer takes it from the model: the chapter's recipe is ``fit(ResNet18(lr=0.01), data)``.
    """

    epochs: int = 10
    batch_size: int = 128
    lr: float | None = None
    resize: int | None = 96
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.lr is not None:
            learning_rate(self.lr)  # a positive, finite number, or ValueError saying so
        if self.resize is not None and (not isinstance(self.resize, int) or self.resize < 1):
            raise ValueError(f"resize must be a positive integer (pixels) or None, got {self.resize!r}")


@dataclass
class History:
    """Per-epoch metrics (``rows``) and the loss of every training step (``step_losses``)."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    step_losses: list[float] = field(default_factory=list)
    dataset: str = ""
    note: str = ""

    def column(self, name: str) -> list[Any]:
        """One metric over the epochs, e.g. ``history.column("val_acc")``."""
        return [row[name] for row in self.rows]


def evaluate(predict: Callable[[np.ndarray], np.ndarray], batches: Batches) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of a predict function over all batches, computed in float64 NumPy."""
    total_loss, correct = 0.0, 0
    for x, labels in prefetch(batches.epoch(0)):
        if len(labels) < batches.batch_size:
            # Pad the last batch to the full size: compiled predict functions (XLA, tf.function, cuDNN's tuned
            # kernels) then see one shape, not two. Inference is per image, so the padding changes nothing.
            x = np.concatenate([x, np.zeros((batches.batch_size - len(labels), *x.shape[1:]), x.dtype)])
        logits = np.asarray(predict(x), dtype=np.float64)[: len(labels)]
        total_loss += softmax_cross_entropy(logits, labels)[0] * len(labels)
        correct += int((logits.argmax(axis=1) == labels).sum())
    return total_loss / batches.num_examples, correct / batches.num_examples


def _write_metrics(rows: list[dict[str, Any]], path: Path) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    with atomic_path(path) as temporary:
        temporary.write_text(text.getvalue())


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    numeric = {"epoch": int, "train_loss": float, "val_loss": float, "val_acc": float, "images_per_s": float}
    return [{k: numeric.get(k, str)(v) for k, v in row.items()} for row in rows]


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
    axes.set_xlim(0.5, max(epochs) + 0.5)
    axes.grid(alpha=0.3)
    axes.legend()
    if title:
        axes.set_title(title, fontsize=9)
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=100)


#: Settings added after the first checkpoints were written, with the value those runs had: such a checkpoint
#: resumes as long as the run keeps that value.
IMPLIED_SETTINGS = {"dtype": "float32", "mixed_precision": "False"}


def _settings(
    config: TrainConfig,
    lr: float,
    dataset: Dataset,
    model_name: str,
    backend: str,
    dtype: str,
    mixed_precision: bool,
) -> dict[str, Any]:
    """The settings a resumed run must keep, typed (run.json stores them so; a checkpoint's header as text)."""
    return {
        **{k: v for k, v in asdict(config).items() if k != "epochs"},
        "lr": lr,
        "dataset": dataset.name,
        "model": model_name,
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


def _resume_point(out_dir: Path, spec: Any, settings: dict[str, Any]) -> tuple[dict[str, np.ndarray], int]:
    """The checkpoint's weights and its last complete epoch, after checking it belongs to this run."""
    arrays, header = read_weights(out_dir / CHECKPOINT)
    if header.get("spec") != repr(spec):
        raise ValueError(
            f"{out_dir / CHECKPOINT} was saved from a different model ({header.get('model', '?')}); resume with the "
            "same --model, or choose another --out directory"
        )
    saved = {**IMPLIED_SETTINGS, **header}
    changed = [
        f"{k}: {saved.get(k)} -> {v}"
        for k, v in settings.items()
        if k != "backend" and not _same_setting(saved.get(k), v)
    ]
    if changed:
        raise ValueError(
            f"{out_dir / CHECKPOINT} was trained with other settings ({'; '.join(changed)}); resume with the same "
            "settings, or start a new run in another --out directory"
        )
    return arrays, int(header["epoch"])


def fit(
    model: Any,
    dataset: Dataset,
    config: TrainConfig = TrainConfig(),
    out_dir: str | os.PathLike | None = None,
    init: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    model_name: str = "",
    log: Callable[[str], None] = print,
    compile: bool = False,
    mixed_precision: bool = False,
    accelerator: bool = True,
    plan: Plan | None = None,
) -> History:
    """Train ``model`` on ``dataset`` with plain SGD, evaluating after every epoch; returns the history.

    Args:
        model: a native model of any backend.
        dataset: e.g. ``resnet.data.load_dataset("auto")``.
        config: epochs, batch size, learning rate, resize and seed (the book's recipe by default). Its ``lr``
            None means the model's own ``model.lr``; the learning rate used goes into the log and run.json.
        out_dir: where metrics.csv, curves.png, last.safetensors and run.json go (None: keep nothing).
        init: a neutral weights file to start from; otherwise the seeded framework-neutral initialization,
            the same in every backend.
        resume: continue the run in ``out_dir`` from its last complete epoch.
        progress: show a tqdm progress bar with images per second.
        compile: PyTorch only, run the train step under ``torch.compile`` (the other backends always compile
            theirs: jit in JAX, tf.function in TensorFlow, a hybridized graph in MXNet).
        mixed_precision: compute in bfloat16 with float32 weights (PyTorch and JAX; worth it on a GPU).
        accelerator: train on the GPU when the framework sees one (``backend.to_accelerator``); False keeps the
            model where it is.
        plan: data-parallel training (``resnet.parallel.Plan``) through the framework's own engine, started
            first with ``backend.init_distributed(plan)``: every process calls ``fit`` alike, the global batch
            is ``config.batch_size``, and only process 0 logs, shows progress and writes ``out_dir``. The model
            ends with the trained weights in every process.
    """
    plan = plan or Plan()
    if plan.replicas > 1:
        check_global_batch(config.batch_size, plan)
        if compile:
            raise ValueError("compile=True (--compile) is for one device; train data-parallel without it")
        if not plan.is_main:
            log, progress = (lambda text: None), False
    backend = backend_of(model)
    spec = model.spec
    lr = learning_rate_of(model, config.lr)  # the config's, else the model's own (the book's ResNet(arch, lr))
    device = backend.to_accelerator(model) if accelerator else backend.device_of(model)
    channels = dataset.train_images.shape[1]
    size = config.resize or dataset.train_images.shape[2]
    backend.build(model, (1, channels, size, size))
    out = Path(out_dir) if out_dir is not None else None
    settings = _settings(
        config, lr, dataset, model_name or type(model).__name__, backend.NAME, backend.dtype_of(model), mixed_precision
    )
    history = History(dataset=dataset.name, note=dataset.note)
    start = 1
    if resume:
        if out is None or not (out / CHECKPOINT).is_file():
            raise FileNotFoundError(f"nothing to resume: no {CHECKPOINT} in {out}; start the run without --resume")
        arrays, done = _resume_point(out, spec, settings)
        check_arrays(backend.get_arrays(model), arrays, str(out / CHECKPOINT))
        backend.set_arrays(model, arrays)
        history.rows = [row for row in _read_metrics(out / METRICS) if row["epoch"] <= done]
        start = done + 1
        log(f"resuming from {out / CHECKPOINT}: epoch {done} of {config.epochs} complete")
    elif init is not None:
        load_weights(model, init)
    else:
        backend.set_arrays(model, initial_weights(spec, (1, channels, size, size), config.seed))
    parallel = {"replicas": plan.replicas, "processes": plan.processes, "sync_bn": plan.sync_bn}
    if plan.replicas > 1:
        backend.agree(plan, json.dumps({**settings, **parallel, "epochs": config.epochs, "start": start}))
        trained = backend.replicate(model, plan)
    else:
        trained = model
    writes = out is not None and plan.is_main
    if writes:
        with atomic_path(out / RUN_INFO) as temporary:
            info = {**settings, "epochs": config.epochs, "device": str(device), **parallel, "note": dataset.note,
                    "note_details": list(dataset.details)}
            temporary.write_text(json.dumps(info, indent=2) + "\n")
    if dataset.note:
        log(dataset.note)
        for line in dataset.details:
            log(f"  {line}")
    precision = " in mixed precision (bfloat16)" if mixed_precision else ""
    log(f"training on {device} with learning rate {lr:g}{precision}")

    train = Batches(dataset.train_images, dataset.train_labels, config.batch_size, config.resize, True, config.seed)
    val = Batches(dataset.val_images, dataset.val_labels, config.batch_size, config.resize)
    if plan.replicas > 1:
        train_step = backend.make_parallel_train_step(trained, plan, lr, mixed_precision=mixed_precision)
        log(f"data-parallel: {plan.replicas} replicas ({plan.devices} per process, {plan.processes} process"
            f"{'es' if plan.processes > 1 else ''}), BatchNorm statistics "
            f"{'synchronised over the global batch' if plan.sync_bn else 'per replica'}")
        left = train.num_examples % config.batch_size
        if 0 < left < plan.replicas:
            log(f"the last {left} images of each epoch are fewer than the {plan.replicas} replicas: not trained on")
    else:
        train_step = backend.make_train_step(model, lr, compile=compile, mixed_precision=mixed_precision)
    predict = backend.make_predict(trained, mixed_precision=mixed_precision)
    for epoch in range(start, config.epochs + 1):
        losses, train_loss, seconds = _train_epoch(train_step, train, epoch, config.epochs, progress, plan.replicas)
        history.step_losses += losses
        val_loss, val_acc = evaluate(predict, val)
        row = {
            "epoch": epoch,
            "train_loss": round(train_loss, 6),
            "val_loss": round(val_loss, 6),
            "val_acc": round(val_acc, 6),
            "images_per_s": round(train.num_examples / seconds, 1),
            "dataset": dataset.name,
        }
        history.rows.append(row)
        log(
            f"epoch {epoch}/{config.epochs}: train_loss {train_loss:.4f}, val_loss {val_loss:.4f}, "
            f"val_acc {val_acc:.4f}, {row['images_per_s']:.0f} images/s"
        )
        if writes:
            header = {**{k: str(v) for k, v in settings.items()}, "epoch": str(epoch), "spec": repr(spec)}
            write_weights(backend.get_arrays(trained), out / CHECKPOINT, header)  # safetensors headers hold text
            _write_metrics(history.rows, out / METRICS)
            plot_curves(history.rows, out / CURVES, f"{settings['model']} on {dataset.name} ({backend.NAME})")
    if trained is not model:
        backend.set_arrays(model, backend.get_arrays(trained))
    return history


def _train_epoch(
    train_step: Callable, batches: Batches, epoch: int, epochs: int, progress: bool, smallest: int = 1
) -> tuple[list[float], float, float]:
    """Run one epoch of train steps: (each step's loss, mean loss over the images, seconds taken). A batch of
    fewer than ``smallest`` images (the replicas of a data-parallel step) is left out."""
    if progress:
        from tqdm.auto import tqdm  # a widget in notebooks, text in a terminal
    else:
        from tqdm import tqdm

    losses, weighted, seen, started = [], 0.0, 0, time.perf_counter()
    with tqdm(total=batches.num_examples, unit="img", desc=f"epoch {epoch}/{epochs}", disable=not progress,
              leave=False, dynamic_ncols=True) as bar:

        def record(loss_of: Callable[[], float], size: int) -> None:
            nonlocal weighted, seen
            loss = float(loss_of())  # waits for that step
            losses.append(loss)
            weighted, seen = weighted + loss * size, seen + size
            bar.update(size)
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

        # Each step's loss is read after the next step is queued, so that the framework (a GPU above all)
        # never waits for Python between steps; the batches are made ahead in another thread.
        in_flight: tuple[Callable[[], float], int] | None = None
        for x, labels in prefetch(batches.epoch(epoch)):
            if len(labels) < smallest:
                continue
            queued = train_step(x, labels, wait=False), len(labels)
            if in_flight is not None:
                record(*in_flight)
            in_flight = queued
        if in_flight is not None:
            record(*in_flight)
    return losses, weighted / max(seen, 1), time.perf_counter() - started
