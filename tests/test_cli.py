"""The ``resnet`` command (``resnet.cli``, also ``python -m resnet``): a quick training run, the layer summaries of
the chapter's and the family's models, the family's table, and the usage errors it reports.

Runs of the installed command go through a fresh interpreter with ``RESNET_BACKEND`` set, as a user would type
them; the others call ``resnet.cli.main`` in-process, which is the code path of the command.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from resnet import specs
from resnet.cli import main
from resnet.shapes import family_table, macs, model_part_shapes


def run_cli(*args: str, backend: str, cwd) -> subprocess.CompletedProcess:
    """``python -m resnet *args`` in ``cwd`` with ``RESNET_BACKEND=backend``."""
    env = {**os.environ, "RESNET_BACKEND": backend}
    return subprocess.run([sys.executable, "-m", "resnet", *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=600)


def test_train_quick_run(backend_name, tmp_path):
    result = run_cli("train", "--dataset", "digits", "--epochs", "1", "--resize", "16", "--batch-size", "64",
                     "--lr", "0.05", "--out", "run", "--no-progress", backend=backend_name, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("final validation accuracy: ") and f"{backend_name})" in last and "OFFLINE" in last
    assert {"metrics.csv", "curves.png", "last.safetensors", "run.json"} <= set(os.listdir(tmp_path / "run"))


def test_summary_of_resnet18(backend_name, tmp_path):
    result = run_cli("summary", "resnet18", backend=backend_name, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "b5    output shape: (1, 512, 3, 3)" in result.stdout and "11,178,378" in result.stdout


def test_summary_of_a_family_model(backend_name, fresh_selection, capsys):
    assert main(["--backend", backend_name, "summary", "resnext50-32x4d", "--input-shape", "1,3,64,64"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1:] == [
        *(f"{part:<4}  output shape: {shape}" for part, shape in model_part_shapes(
            specs.family_spec("resnext50_32x4d"), (1, 3, 64, 64))),
        "trainable parameters: 25,028,904",
        f"multiply-adds: {macs(specs.family_spec('resnext50_32x4d'), (1, 3, 64, 64)):,}",
    ]


def test_family_prints_the_table(capsys):
    assert main(["family"]) == 0
    assert capsys.readouterr().out.strip() == family_table()


@pytest.mark.parametrize(
    "args, message",
    [
        (("train", "--model", "resnet99"), "unknown model 'resnet99'. Known models:"),
        (("train", "--epochs", "0"), "epochs must be a positive integer"),
        (("train", "--resize", "-3"), "resize must be a positive integer"),
        (("train", "--out", "/proc/no/such/dir", "--dataset", "digits"), "not writable"),
        (("train", "--resume", "--out", "empty"), "no run to resume in empty"),
        (("summary", "resnet99"), "unknown model"),
    ],
)
def test_usage_errors(backend_name, tmp_path, args, message, fresh_selection, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["--backend", backend_name, *args]) == 2
    assert message in capsys.readouterr().err
