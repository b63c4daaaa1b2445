"""The ``resnet`` command (also ``python -m resnet``): train, summarize and compare the chapter's models.

resnet train                            # the chapter's recipe: ResNet-18, 10 epochs, batch 128, lr 0.01, 96x96
resnet train --dataset digits --epochs 3 --resize 32 --lr 0.05   # a quick run with no network
resnet summary resnet18                 # the layer summary in the selected backend
resnet --backend jax summary resnet50   # choose the backend here instead of RESNET_BACKEND
resnet family                           # the ResNet family: parameters and multiply-adds (no framework)
resnet convert resnet50.pth --from torchvision --model resnet50 -o resnet50.safetensors   # published -> ours
resnet convert resnet50.safetensors --to transformers -o resnet-50/                       # ours -> published
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from resnet import selection
from resnet.contract import check_mixed_precision
from resnet.data import DATASETS
from resnet.models import MODELS, build_model, model_entry
from resnet.rundir import CHECKPOINT, check_out_dir, new_run_directory, point_latest, prepare_new_run
from resnet.runlock import RunInUseError, RunLock
from resnet.specs import DTYPES

__all__ = ["main"]


def _input_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.lower().replace("x", ",").split(","))
    except ValueError:
        shape = ()
    if len(shape) != 4 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected N,C,H,W such as 1,1,96,96; got {text!r}")
    return shape


def plain(text: str) -> str:
    """Docstring text as plain text for a terminal: reStructuredText's ``double backquotes`` dropped."""
    return re.sub(r"``(.+?)``", r"\1", text)


def _command(commands: argparse._SubParsersAction, name: str, summary: str) -> argparse.ArgumentParser:
    """A subcommand whose one-line summary shows in ``resnet --help`` and as its own help's description."""
    return commands.add_parser(name, help=plain(summary), description=plain(summary[0].upper() + summary[1:]) + ".")


def _parser() -> argparse.ArgumentParser:
    description, examples = __doc__.split("\n\n", 1)
    parser = argparse.ArgumentParser(
        prog="resnet",
        description=plain(description),
        epilog="examples:\n" + plain(examples).rstrip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,  # keeps the examples' lines as written
    )
    parser.add_argument(
        "--backend", help="torch, tensorflow, jax or mxnet (default: RESNET_BACKEND, else the first installed)"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train = _command(commands, "train", "train a model with the chapter's recipe")
    train.add_argument("--backend", dest="train_backend", help="as the global --backend")
    train.add_argument("--model", default="resnet18", help=f"model name: {', '.join(MODELS)} (default resnet18)")
    train.add_argument("--epochs", type=int, default=10, help="epochs (default 10)")
    train.add_argument("--batch-size", type=int, default=128, help="images per step (default 128)")
    train.add_argument(
        "--lr",
        type=float,
        default=0.01,
        help="SGD learning rate, kept by the model as model.lr as in the chapter's ResNet18(lr=0.01) "
        "(default 0.01, the chapter's recipe)",
    )
    train.add_argument("--resize", type=int, default=96, help="image height and width (default 96)")
    train.add_argument(
        "--dataset",
        default="auto",
        choices=DATASETS,
        help="fashion-mnist, digits (offline), or auto: Fashion-MNIST if cached or downloadable, "
        "else digits (default auto)",
    )
    train.add_argument("--data-dir", help="where datasets are cached (default: RESNET_DATA, else ~/.cache/resnet)")
    for option, examples in (("--max-train-examples", "training"), ("--max-val-examples", "validation")):
        train.add_argument(
            option,
            type=int,
            metavar="N",
            help=f"use only the first N {examples} examples, for a quick try (default: all)",
        )
    train.add_argument("--seed", type=int, default=0, help="seed for the initial weights and shuffling (default 0)")
    train.add_argument("--init", metavar="FILE", help="start from this neutral weights file")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its last epoch")
    train.add_argument(
        "--out",
        metavar="DIR",
        help="run directory for last.safetensors, metrics.csv, curves.png and run.json (default: a "
        "new runs/MODEL-BACKEND-TIME, with runs/latest linked to it; with --resume, runs/latest)",
    )
    train.add_argument("--overwrite", action="store_true", help="replace the run that --out holds")
    train.add_argument(
        "--dtype",
        default="float32",
        choices=DTYPES,
        help="precision of the weights and computation (default float32; float64 follows the NumPy "
        "reference step for step, several times slower)",
    )
    train.add_argument(
        "--mixed-precision",
        action="store_true",
        help="torch and jax: compute in bfloat16 with float32 weights (for a GPU)",
    )
    train.add_argument("--cpu", action="store_true", help="train on the CPU even when the framework sees a GPU")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument(
        "--compile",
        action="store_true",
        help="torch only: run the train step under torch.compile (the other backends always compile it)",
    )
    parallel = train.add_argument_group(
        "several devices or hosts",
        "data-parallel training through the framework's own engine (README: \"Training on "
        'several devices or hosts"); --batch-size stays the global batch',
    )
    parallel.add_argument(
        "--devices",
        type=int,
        default=1,
        help="replicas on this host (torch: worker processes, one per device; jax, tensorflow, "
        "mxnet: devices of this process) (default 1)",
    )
    parallel.add_argument(
        "--sync-bn",
        action="store_true",
        help="BatchNorm statistics over the global batch (the framework's synchronised BatchNorm) "
        "instead of per replica",
    )
    parallel.add_argument(
        "--coordinator",
        metavar="HOST:PORT",
        help="jax: where the processes meet, process 0's address (default: JAX_COORDINATOR_ADDRESS)",
    )
    parallel.add_argument(
        "--num-processes",
        type=int,
        help="jax: processes in all (default: JAX_NUM_PROCESSES); torch takes torchrun's, "
        "tensorflow TF_CONFIG's, mxnet its launcher's",
    )
    parallel.add_argument("--process-id", type=int, help="jax: this process, 0 to --num-processes - 1")
    from resnet import bench  # imports no framework

    bench.add_arguments(_command(commands, "bench", "measure speed against a stock-layer reference"))
    summary = _command(commands, "summary", "print a model's layer summary (NCHW shapes)")
    summary.add_argument("model", help=f"model name: {', '.join(MODELS)}")
    summary.add_argument("--input-shape", type=_input_shape, help="N,C,H,W (default: the model's own)")
    summary.add_argument(
        "--num-classes",
        type=int,
        help="outputs of the head (default: the model's own, 10 for resnet18, 1000 for the family)",
    )
    family = _command(commands, "family", "the ResNet family's parameters and multiply-adds, as a Markdown table")
    family.add_argument("--size", type=int, default=224, help="input height and width (default 224)")
    family.add_argument("--in-channels", type=int, default=3, help="input channels (default 3)")
    family.add_argument("--num-classes", type=int, default=1000, help="outputs of the head (default 1000)")
    convert = _command(commands, "convert", "convert published checkpoints to neutral weights files and back")
    convert.add_argument("source", help="a checkpoint file or Hugging Face model directory (--from), or ours (--to)")
    convert.add_argument("--from", dest="from_", metavar="FORMAT", help="torchvision, timm, transformers, keras-hub")
    convert.add_argument("--to", metavar="FORMAT", help="torchvision, timm (a .safetensors or .pth file), transformers")
    convert.add_argument(
        "--model", help="with --from: the architecture, e.g. resnet50 (transformers: default from config.json)"
    )
    convert.add_argument("-o", "--out", required=True, help="the file (or transformers model directory) to write")
    convert.add_argument("--num-classes", type=int, help="with --from: outputs of the head (default: the checkpoint's)")
    convert.add_argument(
        "--stride-in-1x1",
        action=argparse.BooleanOptionalAction,
        help="with --from: a bottleneck's stride on its first 1x1 convolution (the paper's, transformers' "
        "downsample_in_bottleneck) or, with --no-stride-in-1x1, on the 3x3 (torchvision's v1.5); default: what "
        "config.json says, else v1.5",
    )
    return parser


def _convert(args: argparse.Namespace) -> int:
    from resnet.checkpoints import run_convert  # imports no framework (torch only to read a .pth)

    print(run_convert(args.source, args.out, args.from_, args.to, args.model, args.num_classes, args.stride_in_1x1))
    return 0


def _summary(args: argparse.Namespace) -> int:
    import resnet
    from resnet.api import check_input_shape

    entry = model_entry(args.model)
    shape = check_input_shape(args.input_shape or entry.input_shape)  # an NHWC-looking shape fails here, first
    backend = selection.backend_module()
    num_classes = entry.num_classes if args.num_classes is None else args.num_classes
    model = build_model(args.model, backend, num_classes, shape[1])
    print(f"{args.model} ({entry.description}) in {backend.NAME}: {_describe_input(shape)}, {num_classes} classes")
    resnet.layer_summary(model, shape)
    print(f"trainable parameters: {resnet.num_params(model, shape):,}")
    print(f"multiply-adds: {resnet.macs(model, shape):,}")
    return 0


def _describe_input(shape: tuple[int, ...]) -> str:
    """``input (1, 3, 96, 96): batch 1, 3 input channels, 96x96``: the NCHW shape given, in words."""
    n, c, h, w = shape
    return f"input {shape}: batch {n}, {c} input channel{'s' if c != 1 else ''}, {h}x{w}"


def _family(args: argparse.Namespace) -> int:
    from resnet.shapes import family_table

    if min(args.size, args.in_channels, args.num_classes) < 1:
        raise ValueError("--size, --in-channels and --num-classes must be positive")
    print(family_table(args.size, args.in_channels, args.num_classes))
    return 0


#: Where runs go without --out, and the link to the newest of them.
RUNS, LATEST = Path("runs"), Path("runs") / "latest"


def _run_directory(args: argparse.Namespace, backend: str, writes: bool = True) -> Path:
    """The run directory: --out, else runs/latest to resume, else a new runs/MODEL-BACKEND-TIME; checked
    (writable, not a file, holding a run only with --resume or --overwrite) without creating anything.
    A process that does not write (``writes`` False: not process 0) only needs it to resume."""
    if args.out is None:
        # runs/latest resolved: the run it links to is the one resumed, and the link stays as it is
        out = (
            Path(os.path.relpath(os.path.realpath(LATEST)))
            if args.resume
            else new_run_directory(RUNS, args.model.lower(), backend)
        )
    else:
        out = check_out_dir(args.out)
    if writes:
        RunLock.check_free(out)
    if args.resume:
        if args.overwrite:
            raise ValueError("--resume continues the run in --out and --overwrite replaces it: choose one")
        if not (out / CHECKPOINT).is_file():
            raise ValueError(f"--resume: there is no run to resume in {out} (no {CHECKPOINT}); drop --resume")
    elif writes and not args.overwrite:
        prepare_new_run(out, overwrite=False)
    return check_out_dir(out) if writes else out


def _check_init(path: str | None) -> None:
    """--init: a readable neutral weights file with finite values (its fit to the model is checked on load)."""
    if path is not None:
        from resnet.weights import check_finite, read_weights

        check_finite(read_weights(path)[0], repr(path))


def _resume_command(args: argparse.Namespace, out: Path) -> str:
    """The command that continues an interrupted run: the same arguments, with --resume and --out."""
    argv, skip = [], False
    for word in args.argv:
        if skip:
            skip = False
            continue
        if word in ("--out", "--overwrite", "--resume") or word.startswith("--out="):
            skip = word == "--out"
            continue
        argv.append(word)
    return shlex.join(["resnet", *argv, "--resume", "--out", str(out)])


def _train(args: argparse.Namespace) -> int:
    from resnet.data import load_dataset
    from resnet.interrupts import TrainingInterrupted
    from resnet.parallel import check_global_batch, plan_from_environment
    from resnet.training import TrainConfig, fit

    config = TrainConfig(  # validates first
        args.epochs,
        args.batch_size,
        args.lr,
        args.resize,
        args.seed,
        args.max_train_examples,
        args.max_val_examples,
    )
    model_entry(args.model)
    name = selection.backend()
    plan = plan_from_environment(
        name, args.devices, args.sync_bn, args.coordinator, args.num_processes, args.process_id
    )
    out = _run_directory(args, name, writes=plan.is_main)  # process 0 writes the run
    _check_init(args.init)
    check_global_batch(config.batch_size, plan)
    backend = selection.backend_module()
    check_mixed_precision(backend.NAME, args.dtype, args.mixed_precision)  # before the data set is loaded
    # PyTorch: one worker process per device, each running this with the run directory chosen here.
    workers = backend.launch(plan, main, ([*args.argv, "--out", str(out)] if args.out is None else args.argv,))
    if workers is not None:
        if args.out is None and not args.resume and out.is_dir():
            point_latest(LATEST, out)
        return max(workers.values(), default=0)
    plan = backend.init_distributed(plan)  # before any model is built
    say = print if plan.is_main else (lambda *text: None)
    dataset = load_dataset(args.dataset, args.data_dir)
    # The model keeps the learning rate, as the chapter's ResNet18(lr=0.01); the config says the same.
    model = build_model(args.model, backend, dataset.num_classes, dataset.train_images.shape[1], args.dtype, config.lr)
    say(f"training {args.model} ({args.dtype}) in {backend.NAME} on {dataset.name}: {config}")
    try:
        history = fit(
            model,
            dataset,
            config,
            out,
            init=args.init,
            resume=args.resume,
            progress=not args.no_progress,
            model_name=args.model,
            compile=args.compile,
            mixed_precision=args.mixed_precision,
            accelerator=not args.cpu,
            plan=plan,
            overwrite=args.overwrite,
            latest_link=LATEST if args.out is None and not args.resume else None,
        )
    except TrainingInterrupted as stopped:
        print(f"resnet: {stopped.describe()}", file=sys.stderr)
        if stopped.kept_epoch or args.resume:
            print(f"resume with: {_resume_command(args, out)}", file=sys.stderr)
        return stopped.exit_status
    if not plan.is_main:
        return 0
    print(f"run directory: {out} (metrics.csv, curves.png, last.safetensors)")
    if not history.step_losses:
        print(f"nothing to do: all {config.epochs} epochs were already complete")
    final = history.rows[-1] if history.rows else None
    if final is None:
        return 0
    warning = " -- OFFLINE digits set, not Fashion-MNIST" if dataset.name == "digits" else ""
    print(
        f"final validation accuracy: {final['val_acc']:.4f} ({dataset.name}, epoch {final['epoch']}, "
        f"{backend.NAME}){warning}"
    )
    return 0


def _bench(args: argparse.Namespace) -> int:
    from resnet import bench

    return bench.run(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    args.argv = argv  # for the worker processes a data-parallel run starts
    try:
        chosen = _chosen_backend(args.backend, getattr(args, "train_backend", None))
        if chosen:
            selection.choose_backend(chosen, "--backend")  # errors then say it was chosen by --backend
        commands = {"summary": _summary, "train": _train, "bench": _bench, "family": _family, "convert": _convert}
        return commands[args.command](args)
    except (ValueError, ImportError, OSError, RunInUseError, FloatingPointError) as error:
        print(f"resnet: error: {error}", file=sys.stderr)
        return 2


def _chosen_backend(before: str | None, after: str | None) -> str | None:
    """The --backend given before or after ``train`` (once, or the same twice); ValueError for an empty or
    contradicting choice."""
    for value in (before, after):
        if value is not None and not value.strip():
            raise ValueError("--backend is empty: give torch, tensorflow, jax or mxnet (or leave --backend out)")
    if before and after and selection.canonical_backend_name(before) != selection.canonical_backend_name(after):
        raise ValueError(f"--backend {before} and train --backend {after} contradict each other: give one")
    return after or before
