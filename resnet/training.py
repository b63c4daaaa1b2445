"""Training the chapter's recipe: one loop for every backend, around each backend's own fast train step.

The loop, the metrics, the checkpoints and the plot are framework-free; the backend supplies
``make_train_step`` (jit in JAX, tf.function in TensorFlow, a hybridized block in MXNet, eager or
torch.compile in PyTorch) and ``make_predict``. The loop never makes the framework wait: the next batch is
resized in a background thread while a step runs, and each step's loss is read only after the next step
has been queued. The model trains on the GPU when its framework sees one (``backend.to_accelerator``).

The run directory (``resnet.rundir``: last.safetensors, metrics.csv, curves.png, run.json) is one
consistent state per epoch, locked for the run (``resnet.runlock``); Ctrl-C or SIGTERM stops at the next
step boundary (``resnet.interrupts``), and a loss that stops being finite ends the run with the last good
checkpoint kept.

The learning rate is the book's: ``TrainConfig(lr=None)`` (the default) trains with the model's own
``model.lr`` (``ResNet18(lr=0.01)`` in the chapter's recipe); a number there overrides it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from resnet.api import backend_of
from resnet.batches import Batches, prefetch
from resnet.contract import learning_rate_of
from resnet.data import Dataset
from resnet.faults import fault_point
from resnet.init import initial_weights
from resnet.interrupts import StopRequest, TrainingInterrupted, stop_requests
from resnet.parallel import Plan, check_global_batch
from resnet.recipe import History, TrainConfig, check_input_size
from resnet.reference import softmax_cross_entropy
from resnet.rundir import (
    CHECKPOINT,
    METRICS,
    check_out_dir,
    commit_epoch,
    plot_curves,
    point_latest,
    prepare_new_run,
    remove_temporaries,
    resume_point,
    run_settings,
    write_metrics,
    write_run_info,
)
from resnet.runlock import RunLock
from resnet.weights import check_arrays, load_weights

__all__ = ["CHECKPOINT", "METRICS", "History", "TrainConfig", "TrainingDiverged", "evaluate", "fit"]


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


class TrainingDiverged(FloatingPointError):
    """The training loss stopped being finite (NaN or inf): the run stopped, its last good epoch kept."""


class _NonFiniteLoss(FloatingPointError):
    def __init__(self, step: int, loss: float) -> None:
        self.step, self.loss = step, loss
        super().__init__(f"the training loss is {loss} at step {step}")


class _Stopped(Exception):
    def __init__(self, step: int) -> None:
        self.step = step


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
    overwrite: bool = False,
    latest_link: str | os.PathLike | None = None,
) -> History:
    """Train ``model`` on ``dataset`` with plain SGD, evaluating after every epoch; returns the history.

    Args:
        model: a native model of any backend.
        dataset: e.g. ``resnet.data.load_dataset("auto")``.
        config: epochs, batch size, learning rate, resize and seed (the book's recipe by default), and how
            many of the data set's examples to use (all by default). Its ``lr`` None means the model's own
            ``model.lr``; the learning rate used goes into the log and run.json.
        out_dir: where metrics.csv, curves.png, last.safetensors and run.json go (None: keep nothing). It is
            locked for the run: a second run into it fails at once (``RunInUseError``). A directory that holds
            a run is refused (``RunExistsError``) unless ``resume`` or ``overwrite``.
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
        overwrite: replace the run that ``out_dir`` holds (its four files are removed first).
        latest_link: a symbolic link pointed at ``out_dir`` once the run has started (the CLI's runs/latest).

    Raises:
        TrainingInterrupted: (a KeyboardInterrupt) on SIGINT or SIGTERM, at the next step boundary, with
            ``out_dir`` holding the last complete epoch. Runs of several processes are not intercepted.
        TrainingDiverged: when a step's loss is NaN or inf; ``out_dir`` keeps the last good epoch.
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
    dataset = dataset.first(config.max_train_examples, config.max_val_examples)
    lr = learning_rate_of(model, config.lr)  # the config's, else the model's own (the book's ResNet(arch, lr))
    channels = dataset.train_images.shape[1]
    size = config.resize or dataset.train_images.shape[2]
    check_input_size(spec, channels, size)
    out = check_out_dir(out_dir) if out_dir is not None else None
    writes = out is not None and plan.is_main
    if resume and (out is None or not (out / CHECKPOINT).is_file()):
        raise FileNotFoundError(f"nothing to resume: no {CHECKPOINT} in {out}; start the run without --resume")
    if writes and not resume and not overwrite:
        prepare_new_run(out, overwrite=False)  # refused before any work is done, and again under the lock
    device = backend.to_accelerator(model) if accelerator else backend.device_of(model)
    backend.build(model, (1, channels, size, size))
    settings = run_settings(
        config,
        lr,
        dataset.name,
        model_name or type(model).__name__,
        backend.NAME,
        backend.dtype_of(model),
        mixed_precision,
    )
    history = History(dataset=dataset.name, note=dataset.note)
    title = f"{settings['model']} on {dataset.name} ({backend.NAME})"
    with contextlib.ExitStack() as held:
        if not resume:  # the starting weights are checked before the run directory is made
            if init is not None:
                load_weights(model, init)
            else:
                backend.set_arrays(model, initial_weights(spec, (1, channels, size, size), config.seed))
        if writes:
            held.enter_context(RunLock(out, shlex.join(sys.argv), log))
            if not resume:
                prepare_new_run(out, overwrite)  # again, holding the lock
            remove_temporaries(out)
        start = 1
        if resume:
            arrays, done, history.rows = resume_point(out, spec, settings)
            check_arrays(backend.get_arrays(model), arrays, str(out / CHECKPOINT))
            backend.set_arrays(model, arrays)
            start = done + 1
            if writes:  # the views may be an epoch behind the checkpoint (a kill between them): catch them up
                write_metrics(history.rows, out / METRICS)
                if history.rows:
                    plot_curves(history.rows, out / "curves.png", title)
            log(f"resuming from {out / CHECKPOINT}: epoch {done} of {config.epochs} complete")
        if writes and latest_link is not None and not point_latest(Path(latest_link), out):
            log(f"{latest_link} is not a link made by resnet train; left as it is")
        _train(
            model,
            backend,
            dataset,
            config,
            settings,
            plan,
            history,
            start,
            out if writes else None,
            device,
            lr,
            title,
            progress,
            log,
            compile,
            mixed_precision,
        )
    return history


def _train(
    model: Any,
    backend: Any,
    dataset: Dataset,
    config: TrainConfig,
    settings: dict[str, Any],
    plan: Plan,
    history: History,
    start: int,
    out: Path | None,
    device: str,
    lr: float,
    title: str,
    progress: bool,
    log: Callable[[str], None],
    compile: bool,
    mixed_precision: bool,
) -> None:
    """The epochs from ``start``, each committed to ``out`` (None: nothing written) as one state."""
    spec = model.spec
    parallel = {"replicas": plan.replicas, "processes": plan.processes, "sync_bn": plan.sync_bn}
    if plan.replicas > 1:
        backend.agree(plan, json.dumps({**settings, **parallel, "epochs": config.epochs, "start": start}))
        trained = backend.replicate(model, plan)
    else:
        trained = model
    info = {
        **settings,
        "epochs": config.epochs,
        "device": str(device),
        **parallel,
        "note": dataset.note,
        "note_details": list(dataset.details),
    }
    if out is not None:
        write_run_info(out, info, start - 1)
    if dataset.note:
        log(dataset.note)
        for line in dataset.details:
            log(f"  {line}")
    precision = " in mixed precision (bfloat16)" if mixed_precision else ""
    log(f"training on {device} with learning rate {lr:g}{precision}")
    if mixed_precision and "cpu" in str(device).lower():
        log(
            f"warning: mixed precision is meant for a GPU; on this CPU ({device}) bfloat16 can be many times "
            "slower than float32. Drop --mixed-precision (mixed_precision=False) to train in float32"
        )

    train = Batches(dataset.train_images, dataset.train_labels, config.batch_size, config.resize, True, config.seed)
    val = Batches(dataset.val_images, dataset.val_labels, config.batch_size, config.resize)
    if plan.replicas > 1:
        train_step = backend.make_parallel_train_step(trained, plan, lr, mixed_precision=mixed_precision)
        log(
            f"data-parallel: {plan.replicas} replicas ({plan.devices} per process, {plan.processes} process"
            f"{'es' if plan.processes > 1 else ''}), BatchNorm statistics "
            f"{'synchronised over the global batch' if plan.sync_bn else 'per replica'}"
        )
        left = train.num_examples % config.batch_size
        if 0 < left < plan.replicas:
            log(f"the last {left} images of each epoch are fewer than the {plan.replicas} replicas: not trained on")
    else:
        train_step = backend.make_train_step(model, lr, compile=compile, mixed_precision=mixed_precision)
    predict = backend.make_predict(trained, mixed_precision=mixed_precision)
    # Several processes must stop at the same step, which a signal to each cannot promise: theirs stay default.
    with stop_requests(enabled=plan.processes == 1) as stop:
        for epoch in range(start, config.epochs + 1):
            try:
                if stop:
                    raise _Stopped(0)
                losses, train_loss, seconds = _train_epoch(
                    train_step, train, epoch, config.epochs, progress, plan.replicas, stop
                )
            except _Stopped as stopped:
                raise TrainingInterrupted(stop.signum or 2, epoch, stopped.step, epoch - 1, out) from None
            except _NonFiniteLoss as bad:
                kept = (
                    f"{out / CHECKPOINT} keeps epoch {epoch - 1}" if out is not None and epoch > 1 else "nothing kept"
                )
                raise TrainingDiverged(
                    f"the training loss is {bad.loss} at step {bad.step} of epoch {epoch} (learning rate {lr:g}): "
                    f"training stopped ({kept}). Lower the learning rate (--lr), or check the --init weights"
                ) from None
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
            if out is not None:  # safetensors headers hold text
                header = {**{k: str(v) for k, v in settings.items()}, "epoch": str(epoch), "spec": repr(spec)}
                commit_epoch(out, backend.get_arrays(trained), header, history.rows, info, title)
    if trained is not model:
        backend.set_arrays(model, backend.get_arrays(trained))


def _train_epoch(
    train_step: Callable,
    batches: Batches,
    epoch: int,
    epochs: int,
    progress: bool,
    smallest: int = 1,
    stop: StopRequest | None = None,
) -> tuple[list[float], float, float]:
    """Run one epoch of train steps: (each step's loss, mean loss over the images, seconds taken). A batch of
    fewer than ``smallest`` images (the replicas of a data-parallel step) is left out. Raises _Stopped at
    the first step boundary after ``stop`` is set, and _NonFiniteLoss for a loss that is NaN or inf."""
    if progress:
        from tqdm.auto import tqdm  # a widget in notebooks, text in a terminal
    else:
        from tqdm import tqdm

    losses, weighted, seen, started = [], 0.0, 0, time.perf_counter()
    with tqdm(
        total=batches.num_examples,
        unit="img",
        desc=f"epoch {epoch}/{epochs}",
        disable=not progress,
        leave=False,
        dynamic_ncols=True,
    ) as bar:

        def record(loss_of: Callable[[], float], size: int) -> None:
            nonlocal weighted, seen
            loss = float(loss_of())  # waits for that step
            if not math.isfinite(loss):
                raise _NonFiniteLoss(len(losses) + 1, loss)
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
            fault_point("step")
            if in_flight is not None:
                record(*in_flight)
            in_flight = queued
            if stop:
                raise _Stopped(len(losses) + 1)
        if in_flight is not None:
            record(*in_flight)
    return losses, weighted / max(seen, 1), time.perf_counter() - started
