"""The benchmark (``python -m resnet.bench``) and its report (``python -m resnet.bench.report``): a ``--quick``
run in each backend gives every measurement with positive numbers, and the report renders them. No timing is
asserted: speed targets are for the benchmark's own report, never for the tests."""

from __future__ import annotations

import json
import math
import shutil
import time

import numpy as np
import pytest

from resnet import bench, specs
from resnet.bench import COMPILED, MEASUREMENTS, REFERENCES, report
from resnet.shapes import macs

_RUNS: dict[str, object] = {}  # backend -> path of its --quick JSON: one run per backend for all the tests below


@pytest.fixture
def quick_json(backend_name, fresh_selection, tmp_path_factory, capsys):
    """The JSON of one ``--quick`` run through the command line, in the backend under test."""
    if backend_name not in _RUNS:
        path = tmp_path_factory.mktemp(f"bench-{backend_name}") / f"{backend_name}.json"
        status = bench.main(["--quick", "--backend", backend_name, "--json", str(path)])
        printed = capsys.readouterr()
        assert status == 0, printed.err[-4000:]
        for name in MEASUREMENTS:
            assert name in printed.out  # the table names every measurement
        _RUNS[backend_name] = path
    return _RUNS[backend_name]


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_quick_run_has_every_measurement(backend_name, quick_json):
    result = json.loads(quick_json.read_text())
    assert result["backend"] == backend_name and result["quick"] is True
    assert result["machine"]["cpu"] and result["machine"]["versions"]
    entries = {entry["name"]: entry for entry in result["measurements"]}
    assert list(entries) == list(MEASUREMENTS)
    for name, entry in entries.items():
        if name in COMPILED:  # compiling takes minutes: skipped under --quick in torch, n/a elsewhere
            assert entry["status"] == ("skipped" if backend_name == "torch" else "n/a") and entry["reason"]
            continue
        assert entry["status"] == "ok", f"{name}: {entry.get('reason')}\n{entry.get('traceback', '')}"
        repeats = result["settings"]["import_repeats" if name.startswith("import") else "repeats"]
        if name == "recipe":  # one timed run of resnet.training.fit, not alternating repeats
            repeats = 1
        sides = ("ours", "reference") if REFERENCES[name] else ("ours",)
        for side in sides:
            stats = entry[side]
            assert len(stats["samples"]) == repeats and all(_positive(s) for s in stats["samples"]), (name, side)
            assert stats["min"] <= stats["median"] <= stats["max"] and _positive(stats["min"]), (name, side)
        if REFERENCES[name]:
            assert entry["comparable"] is True and _positive(entry["ratio"]), name
        else:
            assert entry["reference"] is None and entry["ratio"] is None and entry["comparable"] is False, name
        if name.startswith(("resnet18", "resnext")):
            assert all(_positive(v) for v in entry["gflops"].values()), name
            assert all(_positive(v) for v in entry["peak_fraction"].values()), name
    assert _positive(entries["matmul_peak"]["ours"]["best"])


def test_report_renders_the_json(backend_name, quick_json, tmp_path, capsys):
    # A second backend's file, to render more than one column: the same numbers under another name.
    other = next(name for name in ("torch", "jax") if name != backend_name)
    copy = json.loads(quick_json.read_text())
    copy["backend"] = other
    (tmp_path / f"{other}.json").write_text(json.dumps(copy))
    shutil.copy(quick_json, tmp_path / f"{backend_name}.json")
    out = tmp_path / "performance.md"
    assert report.main([str(p) for p in sorted(tmp_path.glob("*.json"))] + ["--out", str(out)]) == 0
    text = out.read_text()
    assert "--quick" in text  # quick results are flagged as meaningless
    header = next(line for line in text.splitlines() if line.startswith("| measurement | unit |"))
    columns = [cell.strip() for cell in header.strip("|").split("|")]
    assert sorted(columns[2:]) == sorted([backend_name, other])
    for name in MEASUREMENTS:
        assert f"`{name}`" in text
    assert "ResNeXtBlock(64, 2, 1) fwd+bwd" in text and "| ResNet-18 train step" in text
    assert "Speed targets" in text and json.loads(quick_json.read_text())["machine"]["cpu"] in text
    assert "| ResNet-18 train step vs the chapter's code" in text and "| ResNet-18 inference vs the chapter's" in text
    assert "resnet18_train_book: ours >= 1x the chapter's own code" in text
    png = out.with_suffix(".png")  # the chart, beside the markdown
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix != ".json") == ["performance.md", "performance.png"]
    capsys.readouterr()


def test_chart_draws_each_row_against_its_reference(backend_name, quick_json, tmp_path):
    """One panel per row that compares ours with a model written otherwise, the ResNet-18 rows against the
    chapter's code among them; a file with none of them is refused with the rows it needs."""
    from matplotlib.image import imread

    results = report.load_results([quick_json])
    rows = report.render_chart(results, tmp_path / "chart.png")
    assert rows == list(report.CHART_ROWS)  # a --quick run measures them all
    height, width, _ = imread(tmp_path / "chart.png").shape
    assert width == 1100 and height == 100 * 3 * -(-len(rows) // 2)  # 2 panels a line, 5.5 x 3 inches at 100 dpi
    for result in results:
        result["measurements"] = [e for e in result["measurements"] if e["name"] not in report.CHART_ROWS]
    with pytest.raises(ValueError, match="resnet18_train_book"):
        report.render_chart(results, tmp_path / "empty.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chart.png"]  # nothing half-written left


def test_the_chapters_own_code_trains_and_predicts_beside_ours(rn):
    """The ``*_book`` rows' reference, the chapter's ResNet-18 as its code cells write it: logits of the batch's
    size, finite losses, weights that a train step changes, and ours still running in the same process after it
    (MXNet's book code runs under numpy semantics, ours in the caller's)."""
    from resnet.bench.kit import load_kit
    from resnet.bench.rows import Context

    settings = bench.Settings.quick_settings()
    ctx = Context(rn, load_kit(rn, settings), settings)
    x, labels = ctx.batch()
    book = ctx.kit.book_resnet18(settings.input_shape)
    step, predict = ctx.kit.book_train_step(book, settings.lr), ctx.kit.book_predict(book)
    before = predict(x)
    assert before.shape == (settings.batch_size, 10) and np.isfinite(before).all()
    losses = [step(x, labels) for _ in range(2)]
    assert all(isinstance(loss, float) and math.isfinite(loss) for loss in losses)
    assert not np.allclose(predict(x), before)  # the step moved the weights (and BatchNorm's running averages)
    ours = ctx.ours_resnet18()
    assert math.isfinite(rn.make_train_step(ours, settings.lr)(x, labels))
    assert rn.make_predict(ours)(x).shape == (settings.batch_size, 10)


def test_report_refuses_bad_input(tmp_path, capsys):
    assert report.main([]) == 2
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert report.main([str(bad)]) == 2
    assert "not a benchmark result" in capsys.readouterr().err


def test_unknown_measurement_is_refused_before_any_import(capsys):
    assert bench.main(["--only", "resnet18_train,warp_speed"]) == 2
    error = capsys.readouterr().err
    assert "warp_speed" in error and "resnext_g8" in error  # names the known ones


def test_list_and_options(capsys):
    assert bench.main(["--list"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in MEASUREMENTS)
    assert bench.main(["--repeats", "0"]) == 2
    assert "--repeats" in capsys.readouterr().err


def test_multiply_adds_per_image_of_the_book_models():
    """The model rows' GFLOP per image: ``macs`` of a batch of one."""
    resnet18 = specs.book_resnet(specs.RESNET18_ARCH, 10)
    assert macs(resnet18, (1, 1, 96, 96)) == 318_657_536  # the 0.319 G of the book's ResNet-18
    # ResNeXtBlock(64, g, 1) at 48x48: two 1x1 convolutions (64 -> 64) and the grouped 3x3 (64 // g inputs each).
    for groups in (2, 8, 32):
        block = specs.resnext(64, groups, 1)
        expected = 48 * 48 * (2 * 64 * 64 + 64 * (64 // groups) * 9)
        assert macs(block, (1, 64, 48, 48)) == expected


def test_other_processes_are_told_apart_from_the_benchmark():
    """The CPU that other processes used during a run marks it busy; the lagging load average does not, when
    /proc can tell (a benchmark that has just ended keeps the 1-minute average high for a minute)."""
    assert bench.other_cpu_load((10.0, 2.0), (14.0, 3.0), 2.0) == pytest.approx(1.5)
    assert bench.other_cpu_load(None, (14.0, 3.0), 2.0) is None
    quiet = {"other_cpu_load": 0.02, "load_average_at_start": [2.5], "load_average": [3.0], "usable_cores": 2}
    assert not bench.was_busy(quiet)
    assert bench.was_busy({**quiet, "other_cpu_load": 0.8})
    assert bench.was_busy({**quiet, "other_cpu_load": None})  # no /proc: the load averages decide
    before = bench.cpu_seconds()
    if before is None:
        return  # not Linux: nothing more to check
    spin, give_up = time.process_time() + 0.3, time.perf_counter() + 30
    while time.process_time() < spin and time.perf_counter() < give_up:  # 0.3 s of our own CPU, however loaded
        pass
    after = bench.cpu_seconds()
    assert after[1] - before[1] >= 0.15 and after[0] - before[0] >= after[1] - before[1] - 0.05  # ours is in the total


def test_repeats_take_at_least_min_steps_unless_steps_are_fixed():
    """A side slower than --target-seconds would run one step a repeat; ``min_steps`` (the ResNet-18 rows') makes
    it more, and ``--steps`` fixes the count for every side."""
    calls = {"slow": 0, "fast": 0}
    slow = bench.Side(lambda: calls.__setitem__("slow", calls["slow"] + 1) or time.sleep(0.002), 1)
    fast = bench.Side(lambda: calls.__setitem__("fast", calls["fast"] + 1), 1)
    settings = bench.Settings(repeats=2, target_seconds=0.001, warmup=0)
    result = bench.measure(slow, fast, settings, min_steps=3)
    assert result["ours"]["steps_per_repeat"] == 3 and result["reference"]["steps_per_repeat"] >= 3
    assert calls["slow"] == 1 + 2 * 3  # the one step that sized it, then 2 repeats of 3
    assert bench.measure(slow, fast, settings)["ours"]["steps_per_repeat"] == 1
    fixed = bench.measure(slow, fast, bench.Settings(repeats=2, steps=2, warmup=0), min_steps=3)
    assert fixed["ours"]["steps_per_repeat"] == fixed["reference"]["steps_per_repeat"] == 2


def test_work_a_step_leaves_queued_is_timed_on_its_own_side():
    """A step that returns before its work is done (MXNet's engine is asynchronous) is settled before its
    repeat's clock stops: the other side never starts with that work still queued."""
    queued: list[str] = []
    settled: list[str] = []

    def asynchronous_step() -> None:
        queued.append("ours")

    def reference_step() -> None:
        assert not queued, "the reference started with the other side's work still queued"

    def settle() -> None:
        settled.extend(queued)
        queued.clear()

    settings = bench.Settings(repeats=3, steps=2, warmup=1)
    bench.measure(bench.Side(asynchronous_step, 1), bench.Side(reference_step, 1), settings, settle=settle)
    assert settled == ["ours"] * (1 + 3 * 2) and not queued  # the warm-up's step, then 3 repeats of 2
