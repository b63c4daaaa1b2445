"""The ``resnet`` command (``resnet.cli``, also ``python -m resnet``): a quick training run, the offline fallback and
the learning rate it trains with, the layer summaries of the chapter's and the family's models, the family's table,
its help text, and the usage errors it reports.

Runs of the installed command go through a fresh interpreter with ``RESNET_BACKEND`` set, as a user would type
them; the others call ``resnet.cli.main`` in-process, which is the code path of the command.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from resnet import specs
from resnet.cli import main
from resnet.models import build_model
from resnet.shapes import family_table, macs, model_part_shapes


def run_cli(*args: str, backend: str, cwd) -> subprocess.CompletedProcess:
    """``python -m resnet *args`` in ``cwd`` with ``RESNET_BACKEND=backend``."""
    env = {**os.environ, "RESNET_BACKEND": backend}
    return subprocess.run(
        [sys.executable, "-m", "resnet", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=600
    )


def test_train_quick_run(backend_name, tmp_path):
    result = run_cli(
        "train",
        "--dataset",
        "digits",
        "--max-train-examples",
        "128",
        "--max-val-examples",
        "64",
        "--epochs",
        "1",
        "--resize",
        "16",
        "--batch-size",
        "64",
        "--lr",
        "0.05",
        "--out",
        "run",
        "--no-progress",
        backend=backend_name,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("final validation accuracy: ") and f"{backend_name})" in last and "OFFLINE" in last
    assert {"metrics.csv", "curves.png", "last.safetensors", "run.json"} <= set(os.listdir(tmp_path / "run"))
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["lr"] == 0.05 and info["epochs"] == 1 and info["resize"] == 16 and info["mixed_precision"] is False
    assert info["max_train_examples"] == 128 and info["max_val_examples"] == 64


FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


def test_train_offline_says_why_and_keeps_the_lr(backend_name, fresh_selection, tmp_path, monkeypatch, capsys):
    """Offline, ``resnet train`` prints and stores one line per file (URL and error) and where to put the four
    files; the model is built with --lr as the chapter's ResNet18(lr=0.01), and run.json has typed values."""
    from resnet import cli, data

    monkeypatch.setattr(data, "FASHION_MNIST_URLS", ["http://127.0.0.1:9/"])  # nothing listens on port 9
    monkeypatch.delenv("RESNET_FASHION_MNIST_URL", raising=False)
    built = []
    monkeypatch.setattr(cli, "build_model", lambda *args: built.append(build_model(*args)) or built[-1])
    monkeypatch.chdir(tmp_path)
    assert (
        main(
            [
                "--backend",
                backend_name,
                "train",
                "--data-dir",
                "cache",
                "--max-train-examples",
                "512",
                "--max-val-examples",
                "64",
                "--epochs",
                "1",
                "--resize",
                "8",
                "--batch-size",
                "512",
                "--lr",
                "0.05",
                "--out",
                "run",
                "--no-progress",
                "--cpu",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert built[0].lr == 0.05
    directory = os.path.join("cache", "fashion-mnist")
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["note"].startswith("WARNING: Fashion-MNIST is neither cached nor downloadable")
    *reasons, advice = info["note_details"]
    for name, line in zip(FILES, reasons, strict=True):
        assert line.startswith(f"{name}: http://127.0.0.1:9/{name} ") and "refused" in line.lower(), line
        assert f"  {line}\n" in out
    assert directory in advice and all(name in advice for name in FILES) and f"  {advice}\n" in out
    assert {k: info[k] for k in ("lr", "epochs", "batch_size", "resize", "seed", "mixed_precision", "dtype")} == {
        "lr": 0.05,
        "epochs": 1,
        "batch_size": 512,
        "resize": 8,
        "seed": 0,
        "mixed_precision": False,
        "dtype": "float32",
    }
    assert "with learning rate 0.05" in out


def test_models_by_name_keep_their_lr(rn):
    assert build_model("resnet18", rn, lr=0.01).lr == 0.01 and build_model("resnet18", rn).lr == specs.DEFAULT_LR
    assert build_model("resnet34", rn, 10, 1, lr=0.02).lr == 0.02
    with pytest.raises(ValueError, match="lr must be a positive, finite number"):
        build_model("resnet18", rn, lr=-1)


def test_help_reads_as_plain_text(capsys):
    """``resnet --help`` and every subcommand's help show no reStructuredText backquotes."""
    for args in ([], ["train"], ["summary"], ["family"], ["bench"]):
        with pytest.raises(SystemExit) as exited:
            main([*args, "--help"])
        assert exited.value.code == 0
        text = capsys.readouterr().out
        assert "usage: resnet" in text and "``" not in text, text
        if not args:
            assert "The resnet command (also python -m resnet)" in text and "resnet train --dataset digits" in text


def test_summary_header_describes_the_input_given(backend_name, fresh_selection, capsys):
    assert main(["--backend", backend_name, "summary", "resnet18", "--input-shape", "1,3,96,96"]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert "input (1, 3, 96, 96): batch 1, 3 input channels, 96x96, 10 classes" in header
    assert "1 input channel" not in header


def test_summary_refuses_an_nhwc_shape_first(backend_name, fresh_selection, capsys):
    assert main(["--backend", backend_name, "summary", "resnet18", "--input-shape", "1,96,96,1"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "looks like NHWC" in captured.err and "pass (1, 1, 96, 96)" in captured.err


def test_summary_of_resnet18(backend_name, tmp_path):
    result = run_cli("summary", "resnet18", backend=backend_name, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "b5    output shape: (1, 512, 3, 3)" in result.stdout and "11,178,378" in result.stdout


def test_summary_of_a_family_model(backend_name, fresh_selection, capsys):
    assert main(["--backend", backend_name, "summary", "resnext50-32x4d", "--input-shape", "1,3,64,64"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1:] == [
        *(
            f"{part:<4}  output shape: {shape}"
            for part, shape in model_part_shapes(specs.family_spec("resnext50_32x4d"), (1, 3, 64, 64))
        ),
        "trainable parameters: 25,028,904",
        f"multiply-adds: {macs(specs.family_spec('resnext50_32x4d'), (1, 3, 64, 64)):,}",
    ]


def test_summary_of_the_multigpu_resnet18(backend_name, fresh_selection, capsys):
    """``resnet summary resnet18-multigpu``: by default the input the book's multi-GPU section trains it on,
    Fashion-MNIST's 28x28 grayscale images (not resized), and its 10 classes."""
    assert main(["--backend", backend_name, "summary", "resnet18-multigpu"]) == 0
    out = capsys.readouterr().out.splitlines()
    spec, shape = specs.family_spec("resnet18_multigpu"), (1, 1, 28, 28)
    assert out[0].startswith("resnet18-multigpu (Multi-GPU ResNet-18, the chapter's Residual blocks; stem: a 3x3/1")
    assert out[0].endswith(f"in {backend_name}: input (1, 1, 28, 28): batch 1, 1 input channel, 28x28, 10 classes")
    assert out[1:] == [
        *(f"{part:<4}  output shape: {part_shape}" for part, part_shape in model_part_shapes(spec, shape)),
        "trainable parameters: 11,175,818",
        f"multiply-adds: {macs(spec, shape):,}",
    ]
    assert out[1] == "b1    output shape: (1, 64, 28, 28)"  # no max pooling: the stem keeps the size


def test_train_the_multigpu_resnet18(backend_name, fresh_selection, tmp_path, monkeypatch, capsys):
    """``resnet train --model resnet18_multigpu`` builds it for the data set's channels and classes and trains."""
    from resnet import cli

    built = []
    monkeypatch.setattr(cli, "build_model", lambda *args: built.append(build_model(*args)) or built[-1])
    assert (
        main(
            [
                "--backend",
                backend_name,
                "train",
                "--model",
                "resnet18_multigpu",
                "--dataset",
                "digits",
                "--max-train-examples",
                "256",
                "--max-val-examples",
                "64",
                "--epochs",
                "1",
                "--resize",
                "8",
                "--batch-size",
                "256",
                "--out",
                str(tmp_path / "run"),
                "--no-progress",
                "--cpu",
            ]
        )
        == 0
    )
    assert built[0].spec == specs.family_spec("resnet18_multigpu", 10, 1)
    assert "final validation accuracy: " in capsys.readouterr().out


def test_family_prints_the_table(capsys):
    assert main(["family"]) == 0
    assert capsys.readouterr().out.strip() == family_table()


@pytest.mark.parametrize(
    "args, message",
    [
        (("train", "--model", "resnet99"), "unknown model 'resnet99'. Known models:"),
        (("train", "--epochs", "0"), "epochs must be a positive integer"),
        (("train", "--resize", "-3"), "resize must be an image size in pixels from 1 to 2048"),
        (("train", "--lr", "0"), "lr must be a positive, finite number"),
        (("train", "--out", "/proc/no/such/dir", "--dataset", "digits"), "not writable"),
        (("train", "--resume", "--out", "empty"), "no run to resume in empty"),
        (("summary", "resnet99"), "unknown model"),
    ],
)
def test_usage_errors(backend_name, tmp_path, args, message, fresh_selection, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["--backend", backend_name, *args]) == 2
    assert message in capsys.readouterr().err
