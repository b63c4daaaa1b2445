"""Fault injection: real ``resnet train`` processes killed with SIGKILL at named points (resnet.faults), stopped
with SIGINT and SIGTERM, and raced into one directory; and every bad input refused before any work.

After each kill the run is resumed; in the end its metrics.csv (every column but the speed) and its weights
must equal those of an uninterrupted run with the same seed, bit for bit, with no temporary file left. The
kill chain, SIGTERM and the run-directory rules run in PyTorch and MXNet, whose processes start in seconds
(a JAX or TensorFlow process spends most of its time compiling the step, and the loop and its files are
framework-free); SIGINT, the lock, divergence and every bad input run in every backend.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import INSTALLED

from resnet.cli import main
from resnet.init import initial_weights
from resnet.specs import family_spec
from resnet.weights import FORMAT, read_weights, write_weights

#: A short run: 3 epochs of 3 steps (the first 192 digits in batches of 64, validated on 64) at 8x8, on the CPU.
RUN = (
    "train",
    "--dataset",
    "digits",
    "--max-train-examples",
    "192",
    "--max-val-examples",
    "64",
    "--epochs",
    "3",
    "--resize",
    "8",
    "--batch-size",
    "64",
    "--lr",
    "0.05",
    "--seed",
    "0",
    "--no-progress",
    "--cpu",
)
TIMEOUT = 300
KILL_CHAIN_BACKENDS = [name for name in INSTALLED if name in ("torch", "mxnet")]


def in_quick_backends(test):
    """``test`` parametrized over the quick backends under test (torch, mxnet); where there are none (the
    TensorFlow and JAX sessions) it is not defined at all, rather than reported as skipped."""
    return pytest.mark.parametrize("backend", KILL_CHAIN_BACKENDS)(test) if KILL_CHAIN_BACKENDS else None


def resnet_process(backend: str, *args: str, cwd: Path, fault: str = "") -> subprocess.Popen:
    """A ``python -m resnet`` process, started as a user would (RESNET_FAULT set only when ``fault``)."""
    env = {**os.environ, "RESNET_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("RESNET_FAULT", None)
    if fault:
        env["RESNET_FAULT"] = fault
    return subprocess.Popen(
        [sys.executable, "-m", "resnet", *args],
        cwd=cwd,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def finish(process: subprocess.Popen) -> tuple[int, str, str]:
    """Wait (bounded) for a process we started: (exit status, stdout, stderr); killed on timeout."""
    try:
        out, err = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        pytest.fail(f"resnet did not end within {TIMEOUT} s:\n{err[-2000:]}")
    return process.returncode, out, err


def train(backend: str, cwd: Path, *args: str, fault: str = "") -> tuple[int, str, str]:
    return finish(resnet_process(backend, *RUN, *args, cwd=cwd, fault=fault))


def metrics(directory: Path) -> list[dict[str, str]]:
    """metrics.csv's rows without the speed column (it is measured, so it differs between runs)."""
    with open(directory / "metrics.csv", newline="") as handle:
        return [{k: v for k, v in row.items() if k != "images_per_s"} for row in csv.DictReader(handle)]


def checkpoint_epoch(directory: Path) -> int:
    return int(read_weights(directory / "last.safetensors")[1]["epoch"])


def temporaries(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.glob(".*.tmp"))


def wait_for(condition, what: str, process: subprocess.Popen, seconds: float = TIMEOUT) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the run ended ({process.returncode}) before {what}: {process.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"no {what} within {seconds} s")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, tuple[list, dict]]:
    """Uninterrupted runs, one per backend, made when first asked for: (metrics rows, weights)."""
    made: dict[str, tuple[list, dict]] = {}

    def get(backend: str) -> tuple[list, dict]:
        if backend not in made:  # in this process: the same code as the command's, without a second start-up
            run = tmp_path_factory.mktemp(f"reference-{backend}") / "run"
            assert main(["--backend", backend, *RUN, "--out", str(run)]) == 0
            made[backend] = metrics(run), read_weights(run / "last.safetensors")[0]
        return made[backend]

    return get


def assert_same_run(directory: Path, expected: tuple[list, dict]) -> None:
    rows, weights = expected
    assert metrics(directory) == rows, "metrics.csv differs from the uninterrupted run's"
    found = read_weights(directory / "last.safetensors")[0]
    assert sorted(found) == sorted(weights)
    different = [name for name in weights if not np.array_equal(found[name], weights[name])]
    assert not different, f"weights differ from the uninterrupted run's: {different[:5]}"
    assert temporaries(directory) == []
    assert json.loads((directory / "run.json").read_text())["epochs_complete"] == 3
    assert (directory / "curves.png").stat().st_size > 0


@in_quick_backends
def test_kill_9_anywhere_then_resume_gives_the_uninterrupted_run(backend, tmp_path, reference):
    """One run killed five times, at five kinds of point, resumed after each: the same result, nothing lost."""
    run = tmp_path / "run"
    chain = [
        # (RESNET_FAULT, the checkpoint's epoch after the kill, what the directory looks like then)
        ("after-checkpoint:1", 1, "epoch 1 saved, its metrics not yet: the gap that broke resume"),
        ("step:2", 1, "killed inside epoch 2"),
        ("write:last.safetensors:1", 1, "killed while writing epoch 2's checkpoint: the old one stays"),
        ("after-metrics:1", 2, "epoch 2 saved with its metrics, its curves not yet"),
        ("write:metrics.csv:2", 3, "killed writing epoch 3's metrics (the first write caught the views up)"),
    ]
    for number, (fault, epoch, what) in enumerate(chain):
        resume = ("--resume",) if number else ()
        status, _, err = train(backend, tmp_path, "--out", "run", *resume, fault=fault)
        assert status == -signal.SIGKILL, f"{fault}: the run was not killed there ({status}): {err[-2000:]}"
        assert checkpoint_epoch(run) == epoch, f"after the kill at {fault} ({what})"
        if fault.startswith("write:"):
            assert temporaries(run), f"{fault}: the killed write should have left its temporary file"
        if number == 0:  # the case: before this change, resume failed here for want of metrics.csv
            assert not (run / "metrics.csv").exists()
    status, out, err = train(backend, tmp_path, "--out", "run", "--resume")
    assert status == 0, err
    assert "nothing to do: all 3 epochs were already complete" in out
    assert_same_run(run, reference(backend))


def test_ctrl_c_stops_cleanly_and_says_how_to_resume(backend_name, tmp_path):
    """SIGINT after the first epoch: a clean stop with 130, the last complete epoch kept with its metrics, and
    the command printed resumes the run to its end."""
    interrupt_and_resume(backend_name, signal.SIGINT, tmp_path)


@in_quick_backends
def test_sigterm_stops_cleanly_and_says_how_to_resume(backend, tmp_path):
    """SIGTERM takes SIGINT's path, with 143."""
    interrupt_and_resume(backend, signal.SIGTERM, tmp_path)


def interrupt_and_resume(backend_name: str, signum: int, tmp_path: Path) -> None:
    process = resnet_process(backend_name, *RUN, "--epochs", "4", "--out", "run", cwd=tmp_path)
    run = tmp_path / "run"
    wait_for(lambda: (run / "metrics.csv").exists(), "first epoch", process)
    process.send_signal(signum)
    status, _, err = finish(process)
    assert status == 128 + signum, err
    assert f"interrupted by {signal.Signals(signum).name} in epoch" in err and "Traceback" not in err
    kept = checkpoint_epoch(run)
    assert f"kept: epoch {kept} in run" in err and kept >= 1
    assert temporaries(run) == [] and len(metrics(run)) == kept
    command = re.search(r"^resume with: (.+)$", err, re.M).group(1)
    argv = shlex.split(command)
    assert argv[:2] == ["resnet", "train"] and argv[-3:] == ["--resume", "--out", "run"]
    status, _, err = finish(resnet_process(backend_name, *argv[1:], cwd=tmp_path))
    assert status == 0, err
    assert [int(row["epoch"]) for row in metrics(run)] == [1, 2, 3, 4]


def test_a_second_run_into_a_directory_in_use_is_refused(backend_name, tmp_path):
    """Two runs into one directory: the second is refused at once, naming the first; after the first is killed
    (its lock dies with it) a new run takes the directory over and says so."""
    first = resnet_process(backend_name, *RUN, "--epochs", "1000", "--out", "run", cwd=tmp_path)
    try:
        wait_for(lambda: (tmp_path / "run" / ".run.owner.json").exists(), "lock", first)
        for extra in ((), ("--resume",), ("--overwrite",)):
            started = time.monotonic()
            status, _, err = train(backend_name, tmp_path, "--out", "run", *extra)
            assert status == 2 and f"run is in use by another run (process {first.pid} on" in err, err
            assert time.monotonic() - started < 60  # refused before loading the framework's model or data
    finally:
        first.kill()  # only the process this test started
        first.communicate(timeout=TIMEOUT)
    status, out, err = train(backend_name, tmp_path, "--out", "run", "--epochs", "1", "--overwrite")
    assert status == 0, err
    assert f"taking over from a run that stopped without releasing it (process {first.pid}" in out


def test_diverging_training_stops_with_the_last_good_epoch(backend_name, tmp_path, fresh_selection, capsys):
    """A loss that becomes NaN or inf stops the run with a clear error and no NaN checkpoint."""
    status = main(["--backend", backend_name, *RUN, "--out", str(tmp_path / "run"), "--lr", "1e9"])
    err = capsys.readouterr().err
    assert status == 2, err
    assert re.search(r"the training loss is (nan|inf|-inf) at step \d+ of epoch \d+ \(learning rate 1e\+09\)", err), err
    assert "Lower the learning rate" in err and "Traceback" not in err
    run = tmp_path / "run"
    if (run / "last.safetensors").exists():
        weights = read_weights(run / "last.safetensors")[0]
        assert all(np.isfinite(value).all() for value in weights.values())


# --- bad inputs: refused before any work, with nothing created or changed ---------------------------------------


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root``: (size, modification time in ns), to show that nothing changed."""
    return {
        str(path.relative_to(root)): (path.lstat().st_size, path.lstat().st_mtime_ns) if path.is_file() else ()
        for path in sorted(root.rglob("*"))
    }  # a directory's time changes when a temporary file comes and goes


def weights_file(path: Path, model: str = "resnet18", dtype=np.float32, poison: bool = False) -> None:
    arrays = initial_weights(family_spec(model, 10, 1) if model != "resnet18" else _resnet18(), (1, 1, 8, 8), 0)
    if poison:
        arrays["b1.conv.weight"][0, 0, 0, 0] = np.nan
    if dtype == np.float32:
        write_weights(arrays, path, {"model": model})
    else:  # write_weights only writes floats: the wrong dtype takes safetensors' own writer
        from safetensors.numpy import save_file

        save_file({name: value.astype(dtype) for name, value in arrays.items()}, str(path), metadata={"format": FORMAT})


def _resnet18():
    from resnet.specs import book_resnet

    return book_resnet(((2, 64), (2, 128), (2, 256), (2, 512)), 10)


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory) -> Path:
    """A directory with the files the bad-input cases point at, made once: four weights files take a second."""
    root = tmp_path_factory.mktemp("bad-inputs")
    (root / "empty.safetensors").write_bytes(b"")
    (root / "random.safetensors").write_bytes(np.random.default_rng(0).bytes(4096))
    (root / "pickle.safetensors").write_bytes(b"\x80\x04\x95" + bytes(200))  # a pickle's first bytes
    weights_file(root / "good.safetensors")
    whole = (root / "good.safetensors").read_bytes()
    (root / "truncated.safetensors").write_bytes(whole[: len(whole) // 2])
    weights_file(root / "resnet34.safetensors", "resnet34")
    weights_file(root / "nan.safetensors", poison=True)
    weights_file(root / "int.safetensors", dtype=np.int32)
    (root / "afile").write_text("not a directory")
    (root / "cache" / "fashion-mnist").mkdir(parents=True)
    (root / "cache" / "fashion-mnist" / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b" + bytes(100))
    return root


BAD_INPUTS = [
    (("--epochs", "0"), "epochs must be a positive integer"),
    (("--epochs", "-2"), "epochs must be a positive integer"),
    (("--batch-size", "0"), "batch_size must be a positive integer"),
    (("--lr", "inf"), "lr must be a positive, finite number"),
    (("--lr", "nan"), "lr must be a positive, finite number"),
    (("--lr", "-0.1"), "lr must be a positive, finite number"),
    (("--resize", "0"), "resize must be an image size in pixels from 1 to 2048"),
    (("--resize", "100000"), "resize must be an image size in pixels from 1 to 2048"),
    (("--seed", "-1"), "seed must be an integer from 0 to 2**32 - 1"),
    (("--max-train-examples", "0"), "max_train_examples must be a positive integer, or None for the whole"),
    (("--max-val-examples", "-5"), "max_val_examples must be a positive integer, or None for the whole"),
    (("--model", "resnet99"), "unknown model 'resnet99'. Known models:"),
    (("--out", ""), "--out is empty"),
    (("--out", "afile"), "--out 'afile' is a file, not a directory"),
    (("--out", "afile/run"), "'afile' is a file, so the directory cannot be created"),
    (("--resume", "--out", "nothing"), "no run to resume in nothing"),
    (("--init", "missing.safetensors"), "no weights file at 'missing.safetensors'"),
    (("--init", "empty.safetensors"), "empty.safetensors"),
    (("--init", "random.safetensors"), "random.safetensors"),
    (("--init", "pickle.safetensors"), "pickle.safetensors"),
    (("--init", "truncated.safetensors"), "truncated.safetensors"),
    (("--init", "nan.safetensors"), "hold NaN or inf"),
    (("--init", "resnet34.safetensors"), "does not fit this model"),
    (("--init", "int.safetensors"), "int32"),
    (("--dataset", "fashion-mnist", "--data-dir", "cache"), "train-images-idx3-ubyte.gz"),
]


@pytest.mark.parametrize("args, message", BAD_INPUTS, ids=[" ".join(args) or "none" for args, _ in BAD_INPUTS])
def test_bad_input_is_refused_and_changes_nothing(
    backend_name, args, message, bad_inputs, tmp_path, fresh_selection, monkeypatch, capsys
):
    from resnet import data

    monkeypatch.setattr(data, "FASHION_MNIST_URLS", ["http://127.0.0.1:9/"])  # nothing listens on port 9
    monkeypatch.delenv("RESNET_FASHION_MNIST_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    shutil.copytree(bad_inputs, tmp_path, dirs_exist_ok=True, copy_function=os.link)  # links: no copying
    before = snapshot(tmp_path)
    argv = [word for word in RUN if word not in ("--dataset", "digits")] if "--dataset" in args else list(RUN)
    status = main(["--backend", backend_name, *argv, "--out", "run", *args])
    err = capsys.readouterr().err
    assert status == 2 and message in err, err
    assert "Traceback" not in err
    assert snapshot(tmp_path) == before, "a refused run created or changed files"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--backend", "", "train"], "--backend is empty"),
        (["--backend", "torch", "train", "--backend", "jax"], "contradict each other"),
    ],
)
def test_contradicting_or_empty_backend_is_refused(argv, message, fresh_selection, capsys):
    assert main(argv) == 2 and message in capsys.readouterr().err


@in_quick_backends
def test_a_finished_run_is_not_replaced_without_overwrite(backend, tmp_path, fresh_selection, capsys):
    """A directory that holds a run refuses a new one (naming it) unless --overwrite; nothing is changed."""
    run = tmp_path / "run"
    argv = ["--backend", backend, *RUN, "--epochs", "1", "--out", str(run)]
    assert main(argv) == 0
    before = snapshot(tmp_path)
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{run} already holds a run (resnet18 in {backend}, 1 of 1 epochs complete)" in err
    assert "--resume" in err and "--overwrite" in err
    assert snapshot(tmp_path) == before
    assert main([*argv, "--overwrite"]) == 0
    assert checkpoint_epoch(run) == 1 and len(metrics(run)) == 1


@in_quick_backends
def test_default_run_directories_are_new_with_latest_linked(backend, tmp_path, fresh_selection, monkeypatch, capsys):
    """Without --out every run gets its own runs/MODEL-BACKEND-TIME; runs/latest links to the newest and
    ``--resume`` alone continues it."""
    monkeypatch.chdir(tmp_path)
    argv = ["--backend", backend, *RUN, "--epochs", "1"]
    assert main(argv) == 0
    first = os.readlink("runs/latest")
    assert main(argv) == 0
    second = os.readlink("runs/latest")
    assert first != second and {first, second} <= set(os.listdir("runs"))
    assert first.startswith(f"resnet18-{backend}-")
    assert main([*argv[:-1], "2", "--resume"]) == 0
    assert os.readlink("runs/latest") == second and checkpoint_epoch(Path("runs") / second) == 2
