"""The command line: ``resnet bench`` (its options are added to ``resnet.cli``'s parser) and
``python -m resnet.bench``. Imports no framework until a run selects the backend."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import replace

from resnet import selection
from resnet.bench.output import format_table
from resnet.bench.rows import run_benchmark, selected
from resnet.bench.settings import MEASUREMENTS, Settings

__all__ = ["add_arguments", "main", "run", "settings_from"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``resnet bench`` (also of ``python -m resnet.bench``)."""
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes for CI and tests: batch 8, 32x32, 2 repeats (the numbers mean nothing)",
    )
    parser.add_argument("--repeats", type=int, help="alternating repeats per measurement (default 5; 2 with --quick)")
    parser.add_argument(
        "--steps", type=int, help="steps per repeat for both sides (default: chosen so a repeat takes --target-seconds)"
    )
    parser.add_argument("--target-seconds", type=float, help="about how long one side's repeat takes (default 1.0)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON (e.g. bench-results/jax.json)")
    parser.add_argument(
        "--only",
        metavar="NAMES",
        type=lambda text: [n.strip() for n in text.split(",") if n.strip()],
        action="extend",
        help=f"comma-separated subset of: {', '.join(MEASUREMENTS)}",
    )
    parser.add_argument("--list", action="store_true", help="list the measurements and exit")
    parser.add_argument(
        "--backend",
        dest="bench_backend",
        metavar="NAME",
        help="torch, tensorflow, jax or mxnet (as the global --backend)",
    )
    parser.add_argument(
        "--gpu", action="store_true", help="torch and jax: run the models on the GPU, and time the 10-epoch recipe"
    )
    parser.add_argument(
        "--mixed-precision",
        action="store_true",
        help="torch and jax: both sides compute in bfloat16 with float32 weights",
    )
    parser.add_argument("--compile", action="store_true", help="torch: the recipe's train step under torch.compile")


def settings_from(args: argparse.Namespace) -> Settings:
    """Settings from parsed options (validated)."""
    settings = Settings.quick_settings() if args.quick else Settings()
    for option in ("repeats", "steps"):
        value = getattr(args, option)
        if value is not None and value < 1:
            raise ValueError(f"--{option} must be a positive integer, got {value}")
    if args.target_seconds is not None and not args.target_seconds > 0:
        raise ValueError(f"--target-seconds must be positive, got {args.target_seconds}")
    changes = {
        "repeats": args.repeats,
        "steps": args.steps,
        "target_seconds": args.target_seconds,
        "gpu": args.gpu or None,
        "mixed_precision": args.mixed_precision or None,
        "compile": args.compile or None,
    }
    return replace(settings, **{k: v for k, v in changes.items() if v is not None})


def run(args: argparse.Namespace) -> int:
    """``resnet bench``: run, print the table, write the JSON; 1 if any measurement failed."""
    if args.list:
        for name, text in MEASUREMENTS.items():
            print(f"{name:<24} {text}")
        return 0
    settings = settings_from(args)
    selected(args.only)  # unknown names fail before any framework is imported
    if args.bench_backend:
        selection.choose_backend(args.bench_backend, "--backend")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    rn = selection.backend_module()
    result = run_benchmark(rn, settings, args.only)
    print(format_table(result))
    if args.json:
        from resnet.atomic import atomic_path

        with atomic_path(args.json) as temporary:
            temporary.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.json}")
    failed = [e["name"] for e in result["measurements"] if e["status"] == "error"]
    if failed:
        print(
            f"resnet bench: {len(failed)} measurement(s) failed: {', '.join(failed)} (tracebacks in the JSON)",
            file=sys.stderr,
        )
        for entry in result["measurements"]:
            if entry["status"] == "error":
                print(entry["traceback"], file=sys.stderr)
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m resnet.bench``."""
    from resnet import bench  # the package's docstring describes the command

    parser = argparse.ArgumentParser(prog="python -m resnet.bench", description=(bench.__doc__ or "").split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (ValueError, ImportError, OSError) as error:
        print(f"resnet bench: error: {error}", file=sys.stderr)
        return 2
