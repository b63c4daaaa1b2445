"""Merge the benchmark's JSON files, one per backend, into the markdown of the README's Performance section.

    nox -s bench                                        # writes bench-results/<backend>.json in each environment
    python -m resnet.bench.report bench-results/*.json  # the markdown on stdout
    python -m resnet.bench.report bench-results/*.json --out bench-results/README-performance.md
    python -m resnet.bench.report bench-results/*.json --png bench-results/performance.png  # and the chart

The page holds: the machine (CPU model, cores, load average, framework versions and threads, as each run
recorded them), one table with a row per measurement and a column per backend (cells: ours / reference /
ratio of the medians), the achieved GFLOP/s as a fraction of each framework's measured matrix-product peak,
the ResNeXt block across backends, and the issue's speed targets with whether each is met. With ``--out``
it also writes a PNG chart beside the markdown (``--png`` names another path): per row and backend, our
images/s against the reference's (the stock layers', or the chapter's own code's), the ratio above each
pair. It imports no framework (matplotlib draws the chart, through a bare ``Figure``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from resnet.bench.output import format_number, was_busy
from resnet.bench.settings import MEASUREMENTS, REFERENCES, RESNEXT_GROUPS, SCHEMA, UNITS
from resnet.registry import BACKENDS

__all__ = ["CHART_ROWS", "load_results", "main", "render", "render_chart", "targets"]

#: Minimum ratio (ours / reference, medians) the issue asks for, per backend, on each ResNeXt row.
RESNEXT_TARGETS = {"tensorflow": (10.0, "stock Keras grouped Conv2D"), "jax": (20.0, "stock Flax feature_group_count")}
#: Every backend's ResNeXt block within this factor of the fastest backend's.
ACROSS_BACKENDS = 2.0
#: Ours against the straightforward reference on ResNet-18, every backend.
RESNET18_TARGET = 0.95
#: Ours against the chapter's own code on ResNet-18, every backend (issue 17): never slower.
BOOK_TARGET = 1.0


def load_results(paths: Sequence[str | os.PathLike]) -> list[dict[str, Any]]:
    """Read benchmark JSON files, in the canonical backend order; ValueError for a file that is not one."""
    if not paths:
        raise ValueError("no benchmark files given; pass the JSON files of `python -m resnet.bench --json PATH`")
    results = []
    for path in paths:
        try:
            result = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"{path}: not a readable benchmark file ({error})") from error
        if not isinstance(result, dict) or result.get("schema") != SCHEMA or "measurements" not in result:
            raise ValueError(
                f"{path}: not a benchmark result of this version (schema {SCHEMA}); run the benchmark again"
            )
        result["_path"] = str(path)
        results.append(result)
    backends = [r["backend"] for r in results]
    duplicated = sorted({b for b in backends if backends.count(b) > 1})
    if duplicated:
        raise ValueError(f"more than one file for {', '.join(duplicated)}; pass one file per backend")
    return sorted(results, key=lambda r: BACKENDS.index(r["backend"]) if r["backend"] in BACKENDS else len(BACKENDS))


def _entries(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in result["measurements"]}


def _cell(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return "not measured"
    if entry["status"] != "ok":
        return entry["status"]
    ours = format_number(entry["ours"]["median"])
    if not entry.get("reference"):
        return ours
    ratio = f"**{entry['ratio']:.2f}x**" if entry.get("comparable") else f"{entry['ratio']:.2f}x (n/c)"
    return f"{ours} / {format_number(entry['reference']['median'])} / {ratio}"


def _row_label(name: str, settings: dict[str, Any]) -> str:
    s = settings
    labels = {
        "resnet18_train": f"ResNet-18 train step (batch {s['batch_size']}, 1x{s['image_size']}x{s['image_size']}, SGD)",
        "resnet18_infer": f"ResNet-18 inference (batch {s['batch_size']}, 1x{s['image_size']}x{s['image_size']})",
        "resnet18_train_book": f"ResNet-18 train step vs the chapter's code (batch {s['batch_size']}, SGD)",
        "resnet18_infer_book": f"ResNet-18 inference vs the chapter's code (batch {s['batch_size']})",
        "resnet18_train_parallel": "ResNet-18 train step, data-parallel engine on 1 replica vs plain step",
        "resnet18_train_compiled": "ResNet-18 train step, torch.compile vs eager",
        "resnet18_infer_compiled": "ResNet-18 inference, torch.compile vs eager",
        "data_pipeline": f"data pipeline (`Batches`, 28 -> {s['image_size']}, batch {s['batch_size']})",
        "import_resnet": "`import resnet`",
        "import_backend": "`import resnet.backends.<name>` / framework alone",
        "matmul_peak": f"matmul peak ({s['matmul_n']}x{s['matmul_n']} float32)",
        "recipe": f"the chapter's recipe, {s.get('recipe_epochs', 10)} epochs through `fit`",
    }
    for name_g, groups in RESNEXT_GROUPS.items():
        labels[name_g] = (
            f"ResNeXtBlock({s['block_channels']}, {groups}, 1) fwd+bwd "
            f"(batch {s['block_batch']}, {s['block_channels']}x{s['block_size']}x{s['block_size']})"
        )
    return labels.get(name, name)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def targets(results: list[dict[str, Any]]) -> list[tuple[str, str, str, bool | None]]:
    """(target, backend, measured, met) for each of the issue's speed targets that the results can check;
    ``met`` is None where a measurement is missing."""
    checks: list[tuple[str, str, str, bool | None]] = []
    by_backend = {r["backend"]: _entries(r) for r in results}
    for backend, entries in by_backend.items():
        if backend in RESNEXT_TARGETS:
            minimum, what = RESNEXT_TARGETS[backend]
            for name in RESNEXT_GROUPS:
                entry = entries.get(name)
                ok = entry is not None and entry["status"] == "ok"
                measured = f"{entry['ratio']:.1f}x" if ok else "not measured"
                checks.append(
                    (
                        f"{name}: ours >= {minimum:g}x {what}",
                        backend,
                        measured,
                        entry["ratio"] >= minimum if ok else None,
                    )
                )
        for name, against, minimum in (
            ("resnet18_train", "the stock-layer reference", RESNET18_TARGET),
            ("resnet18_infer", "the stock-layer reference", RESNET18_TARGET),
            ("resnet18_train_book", "the chapter's own code", BOOK_TARGET),
            ("resnet18_infer_book", "the chapter's own code", BOOK_TARGET),
            ("resnet18_train_parallel", "the plain step", RESNET18_TARGET),
        ):
            entry = entries.get(name)
            ok = entry is not None and entry["status"] == "ok"
            checks.append(
                (
                    f"{name}: ours >= {minimum:g}x {against}",
                    backend,
                    f"{entry['ratio']:.2f}x" if ok else "not measured",
                    entry["ratio"] >= minimum if ok else None,
                )
            )
    for name in RESNEXT_GROUPS:
        speeds = {b: e[name]["ours"]["median"] for b, e in by_backend.items() if e.get(name, {}).get("status") == "ok"}
        if len(speeds) < 2:
            continue
        fastest = max(speeds.values())
        for backend, speed in speeds.items():
            checks.append(
                (
                    f"{name}: within {ACROSS_BACKENDS:g}x of the fastest backend",
                    backend,
                    f"{fastest / speed:.2f}x slower than the fastest",
                    fastest / speed <= ACROSS_BACKENDS,
                )
            )
    return checks


def _busy(result: dict[str, Any]) -> bool:
    """Whether other processes ran during this result's run (``resnet.bench.output.was_busy``)."""
    return was_busy(result["machine"])


def _machine_lines(results: list[dict[str, Any]]) -> list[str]:
    machines = {(r["machine"]["cpu"], r["machine"]["usable_cores"]) for r in results}
    lines = []
    if len(machines) > 1:
        lines.append("**Warning: these files come from different machines; the columns do not compare.**")
        lines.append("")
    cpu, cores = sorted(machines)[0]
    first = results[0]["machine"]
    lines.append(
        f"Machine: {cpu}, {cores} usable cores ({first['cores']} in all), {first['platform']}, "
        f"Python {first['python']}. Per backend:"
    )
    lines.append("")
    busy = [r["backend"] for r in results if _busy(r)]
    if busy:
        lines.insert(
            0,
            f"**Warning: other processes were running during the {', '.join(busy)} run(s) (see the CPU use "
            "of other processes below): those numbers are unreliable; measure again on an idle machine.**",
        )
        lines.insert(1, "")
    for r in results:
        m = r["machine"]
        versions = ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items())
        lines.append(
            f"* **{r['backend']}**: {versions}; numpy {m['numpy']}; threads: {m.get('threads')}; "
            f"device {m.get('device')}; fast path: {r['fast_path']}; load average "
            f"{m.get('load_average_at_start')} at start, {m.get('load_average')} at end, other processes "
            f"{m.get('other_cpu_load')} cores" + (f"; environment {m['thread_env']}" if m.get("thread_env") else "")
        )
    return lines


def render(results: list[dict[str, Any]]) -> str:
    """The markdown page for benchmark results (``load_results``)."""
    settings = results[0]["settings"]
    backends = [r["backend"] for r in results]
    by_backend = {r["backend"]: _entries(r) for r in results}
    lines = ["## Performance", ""]
    if any(r["quick"] for r in results):
        lines += ["**These are `--quick` results (tiny sizes): the numbers mean nothing.**", ""]
    differing = [r["backend"] for r in results if r["settings"] != settings]
    if differing:
        lines += [f"**Warning: {', '.join(differing)} ran with other settings than {backends[0]}.**", ""]
    lines += _machine_lines(results) + [""]

    lines += [
        "Each cell: **ours / reference / ratio** of the medians over the repeats (ratio > 1: ours is "
        "faster; for import times the ratio is reference time / our time). The reference is the chapter's "
        "model written the plain way with the framework's stock layers, on the framework's usual fast path "
        "(in the `*_book` rows: the chapter's own code, run on that fast path); "
        "n/c marks a ratio that is not a like-for-like comparison; `n/a`, `skipped`, `unavailable` and "
        "`error` say why a cell has no number (see the JSON).",
        "",
    ]
    rows = []
    for name in MEASUREMENTS:
        entries = [by_backend[b].get(name) for b in backends]
        if all(e is None or e["status"] == "n/a" for e in entries):
            continue
        unit = UNITS.get(name, "images/s")
        rows.append([_row_label(name, settings), unit, *(_cell(e) for e in entries)])
    lines += _table(["measurement", "unit", *backends], rows) + [""]

    peak_rows = []
    for name in ("resnet18_train", "resnet18_infer", "resnet18_train_book", "resnet18_infer_book", *RESNEXT_GROUPS):
        cells = []
        for b in backends:
            e = by_backend[b].get(name)
            if e is None or e["status"] != "ok" or "peak_fraction" not in e:
                cells.append("-")
                continue
            ref = e["peak_fraction"].get("reference")
            cells.append(
                f"{e['gflops']['ours']:.1f} ({100 * e['peak_fraction']['ours']:.0f}%)"
                + (f" / {e['gflops']['reference']:.1f} ({100 * ref:.0f}%)" if ref is not None else "")
            )
        peak_rows.append([_row_label(name, settings), *cells])
    lines += [
        "Achieved GFLOP/s, ours / reference, with the fraction of that framework's measured matmul peak "
        "(2 FLOPs per multiply-add; training and forward+backward count 3x the forward's 0.319 G "
        "multiply-adds per 96x96 image for ResNet-18). Above 100% means the peak was measured low, on a "
        "busy machine:",
        "",
    ]
    lines += _table(["measurement", *backends], peak_rows) + [""]

    checks = targets(results)
    if checks:
        lines += ["Speed targets (issues 7 and 17), measured side by side:", ""]
        marks = {True: "met", False: "**missed**", None: "not measured"}
        lines += _table(["target", "backend", "measured", ""], [[t, b, m, marks[ok]] for t, b, m, ok in checks])
        lines.append("")
    lines += ["What is measured:", ""]
    for name, text in MEASUREMENTS.items():
        reference = REFERENCES[name]
        lines.append(f"* `{name}`: {text}" + (f". Reference: {reference}" if reference else "; no reference") + ".")
    lines += [
        "",
        f"Settings: {json.dumps({k: v for k, v in settings.items() if k != 'quick'})}. "
        "Reproduce with `nox -s bench` and `python -m resnet.bench.report bench-results/*.json`.",
    ]
    return "\n".join(lines) + "\n"


#: The rows of the chart: ours against a model written otherwise (the stock layers', the chapter's own code).
CHART_ROWS = ("resnet18_train", "resnet18_train_book", "resnet18_infer", "resnet18_infer_book", *RESNEXT_GROUPS)
_CHART_TITLES = {
    "resnet18_train": "ResNet-18 train step vs stock layers",
    "resnet18_train_book": "ResNet-18 train step vs the chapter's code",
    "resnet18_infer": "ResNet-18 inference vs stock layers",
    "resnet18_infer_book": "ResNet-18 inference vs the chapter's code",
    **{name: f"ResNeXtBlock, {groups} groups, fwd+bwd vs stock" for name, groups in RESNEXT_GROUPS.items()},
}


def render_chart(results: list[dict[str, Any]], path: str | os.PathLike) -> list[str]:
    """Write the PNG chart of ``results`` (``load_results``) to ``path`` (atomically): one panel per row of
    ``CHART_ROWS`` that any backend measured, a pair of bars per backend (ours, the reference), the ratio of
    the medians above each pair. The rows drawn, in order; ValueError when there are none."""
    by_backend = {r["backend"]: _entries(r) for r in results}
    backends = [r["backend"] for r in results]

    def measured(entry: dict[str, Any] | None) -> bool:
        return entry is not None and entry["status"] == "ok" and bool(entry.get("reference"))

    rows = [name for name in CHART_ROWS if any(measured(by_backend[b].get(name)) for b in backends)]
    if not rows:
        raise ValueError(
            f"no row to chart: none of {', '.join(CHART_ROWS)} was measured with its reference in these files; "
            "run the benchmark without --only, or with those rows in it"
        )
    # A bare Figure, not pyplot: the report must not change the plotting backend of a notebook that calls it.
    from matplotlib.figure import Figure

    columns = 2
    panels = -(-len(rows) // columns)
    figure = Figure(figsize=(5.5 * columns, 3.0 * panels))
    axes_grid = figure.subplots(panels, columns, squeeze=False)
    width = 0.38
    for index, name in enumerate(rows):
        axes = axes_grid[index // columns][index % columns]
        entries = [by_backend[b].get(name) for b in backends]
        positions = range(len(backends))
        ours = [e["ours"]["median"] if measured(e) else 0.0 for e in entries]
        reference = [e["reference"]["median"] if measured(e) else 0.0 for e in entries]
        axes.bar([p - width / 2 for p in positions], ours, width, label="ours", color="tab:blue")
        against = "the chapter's code" if name.endswith("_book") else "stock layers"
        axes.bar([p + width / 2 for p in positions], reference, width, label=against, color="tab:gray")
        for position, entry, height in zip(positions, entries, map(max, ours, reference)):
            text = f"{entry['ratio']:.2f}x" if measured(entry) else "not measured"
            axes.annotate(text, (position, height), ha="center", va="bottom", fontsize=8)
        axes.set_xticks(list(positions), backends)
        axes.set_ylabel(UNITS.get(name, "images/s"))
        axes.set_ylim(0, 1.4 * max(max(ours), max(reference), 1e-9))  # room for the ratios and the legend
        axes.set_title(_CHART_TITLES[name], fontsize=9)
        axes.legend(fontsize=7, loc="upper right", ncol=2)
        axes.grid(axis="y", alpha=0.3)
    for index in range(len(rows), panels * columns):  # an odd number of rows leaves one panel empty
        axes_grid[index // columns][index % columns].set_visible(False)
    settings = results[0]["settings"]
    title = (
        f"resnet bench: ours / reference (medians; batch {settings['batch_size']}, "
        f"1x{settings['image_size']}x{settings['image_size']} for ResNet-18)"
    )
    if any(r["quick"] for r in results):
        title += " -- --quick: the numbers mean nothing"
    if any(_busy(r) for r in results):
        title += " -- other processes were running"
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    from resnet.atomic import atomic_path

    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=100)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m resnet.bench.report FILES [--out PATH]``."""
    parser = argparse.ArgumentParser(prog="python -m resnet.bench.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", help="benchmark JSON files, one per backend (bench-results/*.json)")
    parser.add_argument("--out", metavar="PATH", help="write the markdown here instead of stdout")
    parser.add_argument(
        "--png", metavar="PATH", help="write the chart here (default with --out: beside it, the same name in .png)"
    )
    args = parser.parse_args(argv)
    try:
        results = load_results(args.files)
        text = render(results)
        png = args.png or (str(Path(args.out).with_suffix(".png")) if args.out else None)
        if png:
            render_chart(results, png)
            print(f"wrote {png}", file=sys.stderr if not args.out else sys.stdout)
        if args.out:
            from resnet.atomic import atomic_path

            with atomic_path(args.out) as temporary:
                temporary.write_text(text)
            print(f"wrote {args.out}")
        else:
            sys.stdout.write(text)
    except (ValueError, OSError) as error:
        print(f"resnet.bench.report: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
