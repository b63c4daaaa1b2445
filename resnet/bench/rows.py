"""The measurements, one function per row, and ``run_benchmark``, which runs the selected ones in a backend
and returns the JSON-ready result. Framework-free: the framework work is the backend's own (``make_train_step``,
``make_predict``) and its stock-layer reference's (``resnet.bench.kit``)."""

from __future__ import annotations

import statistics
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from types import ModuleType
from typing import Any

import numpy as np

from resnet.bench.harness import Side, measure, measure_imports, stats
from resnet.bench.kit import Kit, load_kit
from resnet.bench.machine import cpu_seconds, machine_info, other_cpu_load
from resnet.bench.settings import COMPILED, MEASUREMENTS, RESNEXT_GROUPS, SCHEMA, UNITS, Settings
from resnet.shapes import macs

__all__ = ["MEASURE", "ORDER", "Context", "run_benchmark", "selected"]


@dataclass
class Context:
    """What every measurement needs: the backend, its stock-layer kit and the settings."""

    rn: ModuleType
    kit: Kit
    settings: Settings
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))

    def batch(self) -> tuple[np.ndarray, np.ndarray]:
        """One float32 NCHW batch in [0, 1) with int64 labels, as ``resnet.batches.Batches`` yields them."""
        s = self.settings
        x = self.rng.random(s.input_shape, dtype=np.float32)
        return x, self.rng.integers(0, 10, s.batch_size).astype(np.int64)

    def ours_resnet18(self) -> Any:
        """The package's ResNet-18 in the backend, built, with the seeded initial weights, on the device asked."""
        from resnet.init import initial_weights

        model = self.rn.ResNet18()
        self.rn.build(model, self.settings.input_shape)
        self.rn.set_arrays(model, initial_weights(model.spec, self.settings.input_shape, 0))
        if self.settings.gpu:
            self.rn.to_accelerator(model)
        return model


def _gflop(model: Any, input_shape: tuple[int, ...], passes: int) -> float:
    """GFLOP per image of ``passes`` forward passes' worth (2 FLOPs per multiply-add)."""
    return 2 * macs(model.spec, (1, *input_shape[1:])) * passes / 1e9


def _resnet18(ctx: Context, train: bool, compiled: bool = False, book: bool = False) -> dict[str, Any]:
    """Ours against the stock-layer reference, against ours in eager mode (``compiled``: ours under
    ``torch.compile``) or against the chapter's own code (``book``)."""
    s, rn, kit = ctx.settings, ctx.rn, ctx.kit
    x, labels = ctx.batch()
    ours_model = ctx.ours_resnet18()
    mixed = {"mixed_precision": s.mixed_precision}
    if compiled:  # torch only (kit.has_compile); two models, so that neither run touches the other's module
        make = (lambda m: rn.make_train_step(m, s.lr, **mixed)) if train else (lambda m: rn.make_predict(m, **mixed))
        ours, reference = make(kit.compile(ours_model)), make(ctx.ours_resnet18())
    elif book:
        book_model = kit.book_resnet18(s.input_shape)
        if train:
            ours, reference = rn.make_train_step(ours_model, s.lr, **mixed), kit.book_train_step(book_model, s.lr)
        else:
            ours, reference = rn.make_predict(ours_model, **mixed), kit.book_predict(book_model)
    elif train:
        ours = rn.make_train_step(ours_model, s.lr, **mixed)
        reference = kit.stock_train_step(kit.stock_resnet18(s.input_shape), s.lr)
    else:
        ours, reference = rn.make_predict(ours_model, **mixed), kit.stock_predict(kit.stock_resnet18(s.input_shape))
    if train:
        sides = Side(lambda: ours(x, labels), s.batch_size), Side(lambda: reference(x, labels), s.batch_size)
    else:
        sides = Side(lambda: ours(x), s.batch_size), Side(lambda: reference(x), s.batch_size)
    # Compiled code may recompile on its second call (guards on the training flag, BatchNorm's counters).
    result = measure(
        *sides, replace(s, warmup=max(s.warmup, 3)) if compiled else s, min_steps=s.model_min_steps, settle=kit.wait
    )
    # Training counts 3x the forward pass (forward, and the backward's two products per layer).
    result["gflop_per_item"] = _gflop(ours_model, s.input_shape, 3 if train else 1)
    if compiled:
        result["reference_is"] = "ours in eager mode (the default)"
        result["note"] = "ratio > 1: torch.compile wins (compile time excluded: it happens in the warm-up)"
    elif book:
        result["reference_is"] = f"the chapter's own {ctx.rn.NAME} code, {kit.fast_path}"
    else:
        result["reference_is"] = f"stock {ctx.rn.NAME} layers, {kit.fast_path}"
    return result


def _parallel_overhead(ctx: Context) -> dict[str, Any]:
    """The data-parallel path (``make_parallel_train_step`` through the framework's engine) on one replica,
    against the plain train step: what the engine costs where it has nothing to share."""
    from resnet.parallel import Plan

    s, rn = ctx.settings, ctx.rn
    x, labels = ctx.batch()
    plan = rn.init_distributed(Plan())
    ours_model = ctx.ours_resnet18()
    parallel = rn.make_parallel_train_step(
        rn.replicate(ours_model, plan), plan, s.lr, mixed_precision=s.mixed_precision
    )
    plain = rn.make_train_step(ctx.ours_resnet18(), s.lr, mixed_precision=s.mixed_precision)
    result = measure(
        Side(lambda: parallel(x, labels), s.batch_size),
        Side(lambda: plain(x, labels), s.batch_size),
        s,
        min_steps=s.model_min_steps,
        settle=ctx.kit.wait,
    )
    result["gflop_per_item"] = _gflop(ours_model, s.input_shape, 3)
    result["reference_is"] = "ours, the plain train step (make_train_step) on the same device"
    result["note"] = "ratio: the data-parallel path on one replica against the plain step (target >= 0.95x)"
    return result


def _resnext(ctx: Context, groups: int) -> dict[str, Any]:
    s, rn, kit = ctx.settings, ctx.rn, ctx.kit
    from resnet.init import initial_weights

    shape = s.block_shape
    ours_model = rn.ResNeXtBlock(s.block_channels, groups, 1)
    rn.build(ours_model, shape)
    rn.set_arrays(ours_model, initial_weights(ours_model.spec, shape, 0))
    x = ctx.rng.standard_normal(shape, dtype=np.float32)
    output_grad = ctx.rng.standard_normal(shape, dtype=np.float32)
    ours = kit.block_step(kit.ours_block(ours_model), x, output_grad)
    reference = kit.block_step(kit.stock_resnext(shape, s.block_channels, groups, 1), x, output_grad)
    result = measure(Side(ours, s.block_batch), Side(reference, s.block_batch), s)
    result["gflop_per_item"] = _gflop(ours_model, shape, 3)
    result["reference_is"] = f"stock {rn.NAME} grouped convolution, {kit.fast_path}"
    result["shape"] = f"ResNeXtBlock({s.block_channels}, {groups}, 1) on NCHW {shape}"
    return result


def _data_pipeline(ctx: Context) -> dict[str, Any]:
    from resnet.batches import Batches

    s = ctx.settings
    n = s.batch_size * s.data_batches
    images = ctx.rng.integers(0, 256, (n, 1, 28, 28), dtype=np.uint8)
    batches = Batches(images, ctx.rng.integers(0, 10, n), s.batch_size, resize=s.image_size, shuffle=True)
    epoch = iter(range(1 << 30))
    result = measure(Side(lambda: sum(1 for _ in batches.epoch(next(epoch))), s.data_batches), None, s)
    result["note"] = (
        f"batches of {s.batch_size} uint8 1x28x28 -> float32 1x{s.image_size}x{s.image_size}, "
        f"shuffled; {result['ours']['median'] * s.batch_size:,.0f} images/s; no reference"
    )
    return result


def _recipe(ctx: Context) -> dict[str, Any]:
    """Time ``resnet.training.fit`` on the chapter's recipe, on Fashion-MNIST when it is cached, else on random
    images of its size (the time does not depend on the pixels; the accuracy then means nothing)."""
    from resnet.data import DownloadError, load_fashion_mnist, random_like_fashion_mnist
    from resnet.training import TrainConfig, fit

    s, rn = ctx.settings, ctx.rn
    if s.recipe_examples:  # --quick
        dataset = random_like_fashion_mnist(s.recipe_examples)
    else:
        try:
            dataset = load_fashion_mnist(download_missing=False)
        except DownloadError:
            dataset = random_like_fashion_mnist()
    config = TrainConfig(epochs=s.recipe_epochs, batch_size=s.batch_size, lr=s.lr, resize=s.image_size)
    model = rn.ResNet18()
    started = time.perf_counter()
    history = fit(
        model,
        dataset,
        config,
        progress=False,
        log=lambda line: None,
        mixed_precision=s.mixed_precision,
        accelerator=s.gpu,
        compile=s.compile,
    )
    seconds = time.perf_counter() - started
    speeds, val_acc, device = history.column("images_per_s"), history.rows[-1]["val_acc"], rn.device_of(model)
    return {
        "ours": stats([seconds], 1),
        "reference": None,
        "epochs": s.recipe_epochs,
        "images_per_s": speeds,
        "val_acc": val_acc,
        "dataset": dataset.name,
        "device": device,
        "note": (
            f"{s.recipe_epochs} epochs on {dataset.name} ({len(dataset.train_labels):,} + "
            f"{len(dataset.val_labels):,} images) on {device}, evaluation and compilation included; "
            f"{statistics.median(speeds):,.0f} images/s median epoch; final val_acc {val_acc:.4f}"
            + ("" if dataset.name == "fashion-mnist" else " (random images: the accuracy means nothing)")
        ),
    }


def _imports(ctx: Context, backend_too: bool) -> dict[str, Any]:
    repeats = ctx.settings.import_repeats
    if not backend_too:
        result = measure_imports("import resnet", None, repeats)
        result["note"] = "no framework imported; no reference"
        return result
    result = measure_imports(f"import resnet.backends.{ctx.rn.NAME}", ctx.kit.framework_import, repeats)
    result["reference_is"] = f"the framework alone: {ctx.kit.framework_import}"
    result["note"] = "ours includes the framework: ratio = framework alone / ours"
    return result


def _matmul(ctx: Context) -> dict[str, Any]:
    n = ctx.settings.matmul_n
    result = measure(Side(ctx.kit.matmul(n), 2 * n**3 / 1e9), None, ctx.settings, best=True)
    result["note"] = f"{n}x{n} float32 matrix product; the peak is the best repeat"
    return result


#: name -> the function that measures it.
MEASURE: dict[str, Callable[[Context], dict[str, Any]]] = {
    "resnet18_train": lambda ctx: _resnet18(ctx, train=True),
    "resnet18_infer": lambda ctx: _resnet18(ctx, train=False),
    "resnet18_train_book": lambda ctx: _resnet18(ctx, train=True, book=True),
    "resnet18_infer_book": lambda ctx: _resnet18(ctx, train=False, book=True),
    "resnet18_train_compiled": lambda ctx: _resnet18(ctx, train=True, compiled=True),
    "resnet18_infer_compiled": lambda ctx: _resnet18(ctx, train=False, compiled=True),
    "resnet18_train_parallel": _parallel_overhead,
    **{name: (lambda ctx, g=g: _resnext(ctx, g)) for name, g in RESNEXT_GROUPS.items()},
    "data_pipeline": _data_pipeline,
    "import_resnet": lambda ctx: _imports(ctx, backend_too=False),
    "import_backend": lambda ctx: _imports(ctx, backend_too=True),
    "matmul_peak": _matmul,
    "recipe": _recipe,
}
#: The running order: the quick rows first, and the matmul peak before the rows that report a fraction of it.
ORDER = (
    "import_resnet",
    "import_backend",
    "matmul_peak",
    "data_pipeline",
    "resnext_g2",
    "resnext_g8",
    "resnext_g32",
    "resnet18_infer",
    "resnet18_train",
    "resnet18_infer_book",
    "resnet18_train_book",
    "resnet18_train_parallel",
    "resnet18_infer_compiled",
    "resnet18_train_compiled",
    "recipe",
)


def _finish(name: str, result: dict[str, Any]) -> dict[str, Any]:
    """Add the unit, the ratio of the medians and whether it is a like-for-like comparison."""
    unit = UNITS.get(name, "images/s")
    lower_is_better = unit == "s"
    entry = {
        "name": name,
        "description": MEASUREMENTS[name],
        "status": "ok",
        "unit": unit,
        "higher_is_better": not lower_is_better,
        **result,
    }
    ours, reference = entry["ours"], entry.get("reference")
    if reference:
        a, b = (reference["median"], ours["median"]) if lower_is_better else (ours["median"], reference["median"])
        entry["ratio"] = a / b
        entry["comparable"] = True
    else:
        entry["ratio"], entry["comparable"] = None, False
    return entry


def _add_peak_fractions(entries: list[dict[str, Any]]) -> None:
    peak = next((e for e in entries if e["name"] == "matmul_peak" and e["status"] == "ok"), None)
    for entry in entries:
        if entry["status"] != "ok" or "gflop_per_item" not in entry:
            continue
        entry["gflops"] = {
            side: entry[side]["median"] * entry["gflop_per_item"] for side in ("ours", "reference") if entry.get(side)
        }
        if peak:
            entry["peak_fraction"] = {side: value / peak["ours"]["best"] for side, value in entry["gflops"].items()}


def selected(only: Sequence[str] | None) -> list[str]:
    """The measurements to run, in running order; ValueError for an unknown name."""
    if only:
        unknown = [name for name in only if name not in MEASUREMENTS]
        if unknown:
            raise ValueError(f"unknown measurement {', '.join(unknown)}; known: {', '.join(MEASUREMENTS)}")
        return [name for name in ORDER if name in only]
    return list(ORDER)


def _not_measured(name: str, status: str, reason: str) -> dict[str, Any]:
    return {"name": name, "description": MEASUREMENTS[name], "status": status, "reason": reason}


def run_benchmark(
    rn: ModuleType,
    settings: Settings,
    only: Sequence[str] | None = None,
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
) -> dict[str, Any]:
    """Run the selected measurements in backend module ``rn``; the JSON-ready result."""
    kit = load_kit(rn, settings)
    ctx = Context(rn, kit, settings)
    started, cpu_before, began_run = machine_info(kit), cpu_seconds(), time.perf_counter()
    entries = []
    for name in selected(only):
        if name in COMPILED and not kit.has_compile:
            entries.append(
                _not_measured(
                    name, "n/a", f"torch.compile is PyTorch's; ours in {rn.NAME} already runs on {kit.fast_path}"
                )
            )
            continue
        if settings.quick and not only and name in COMPILED:
            entries.append(
                _not_measured(
                    name, "skipped", "not measured under --quick (compiling takes minutes); name it in --only"
                )
            )
            continue
        if name == "recipe" and not (settings.gpu or settings.quick or (only and name in only)):
            entries.append(
                _not_measured(
                    name, "skipped", "measured with --gpu (on a 2-core CPU the 10 epochs take hours); name it in --only"
                )
            )
            continue
        log(f"bench {rn.NAME}: {name} ...")
        began = time.perf_counter()
        try:
            entry = _finish(name, MEASURE[name](ctx))
        except Exception as error:  # one failure must not hide the other rows
            entry = {
                "name": name,
                "description": MEASUREMENTS[name],
                "status": "error",
                "reason": f"{type(error).__name__}: {error}",
                "traceback": traceback.format_exc(limit=8),
            }
            if name.endswith("_compiled"):  # an unusable torch.compile is a finding, not a harness bug
                entry["status"] = "unavailable"
        entry["seconds"] = round(time.perf_counter() - began, 2)
        entries.append(entry)
    _add_peak_fractions(entries)
    machine = machine_info(kit)
    machine["load_average_at_start"] = started["load_average"]
    others = other_cpu_load(cpu_before, cpu_seconds(), time.perf_counter() - began_run)
    machine["other_cpu_load"] = None if others is None else round(others, 3)
    return {
        "schema": SCHEMA,
        "backend": rn.NAME,
        "fast_path": kit.fast_path,
        "quick": settings.quick,
        "settings": asdict(settings),
        "machine": machine,
        "measurements": sorted(entries, key=lambda e: list(MEASUREMENTS).index(e["name"])),
    }
