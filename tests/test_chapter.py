"""The chapter's code cells, run cell by cell against this package in every backend (``chapter_cells.py``).

Each backend's tab runs twice, each time in a fresh process as a new notebook would: ``book``, every cell as
the book has it on the stand-in ``resnet.d2l`` (the chapter's own classes, trained by the stand-in
``Trainer``), and ``package``, the same cells with this package's classes in place of the cells defining
them. Both must show the chapter's shapes, and train.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from chapter_cells import TABS, chapter_cells

from resnet.registry import REGISTRY

RUNNER = Path(__file__).with_name("chapter_cells.py")
WAYS = ("book", "package")
#: The shapes the chapter's cells show: Residual(3), Residual(6, use_1x1conv=True, strides=2), ResNeXtBlock(32,
#: 16, 1) (NCHW; TensorFlow and JAX show them NHWC), and ResNet-18's layer_summary at 96x96.
BLOCK_SHAPES = [(4, 3, 6, 6), (4, 6, 3, 3), (4, 32, 96, 96)]
SUMMARY_SHAPES = [(1, 64, 24, 24), (1, 64, 24, 24), (1, 128, 12, 12), (1, 256, 6, 6), (1, 512, 3, 3), (1, 10)]


def in_layout(shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
    return (shape[0], *shape[2:], shape[1]) if layout == "NHWC" and len(shape) == 4 else shape


def shapes_in(text: str) -> list[tuple[int, ...]]:
    """Every shape written in ``text`` (``torch.Size([1, 64, 24, 24])``, ``(1, 24, 24, 64)``, ...)."""
    return [tuple(int(d) for d in re.findall(r"\d+", group)) for group in re.findall(r"[\[(]([\d, ]+)[\])]", text)]


@functools.cache
def chapter_run(backend: str, way: str) -> dict:
    """Run the tab in a fresh process outside the source tree (the installed package, as a reader has it)."""
    # The data set the cells write is removed with its folder once the process ends.
    with tempfile.TemporaryDirectory(prefix="chapter-data-") as data:
        env = {**os.environ, "RESNET_DATA": data, "TF_CPP_MIN_LOG_LEVEL": "3"}
        done = subprocess.run(
            [sys.executable, str(RUNNER), backend, way],
            capture_output=True,
            text=True,
            timeout=900,
            cwd=data,
            env=env,
        )
    marker = "CHAPTER-RESULT "
    lines = [line for line in done.stdout.splitlines() if line.startswith(marker)]
    assert done.returncode == 0 and lines, (
        f"the runner failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    )
    result = json.loads(lines[-1][len(marker) :])
    for cell in result["cells"]:
        assert cell["status"] != "error", f"{backend} ({way}): cell {cell['index']} failed:\n{cell['error']}"
    return result


@pytest.mark.parametrize("way", WAYS)
def test_every_cell_of_the_tab_runs(backend_name, way):
    result = chapter_run(backend_name, way)
    tab = TABS[backend_name]
    expected = [cell.index for cell in chapter_cells() if cell.tabs is None or tab in cell.tabs]
    assert [cell["index"] for cell in result["cells"]] == expected
    statuses = {cell["status"] for cell in result["cells"]}
    assert statuses <= ({"ran", "adapted"} if way == "book" else {"ran", "adapted", "package"})


@pytest.mark.parametrize("way", WAYS)
def test_cells_show_the_chapters_shapes(backend_name, way):
    layout = REGISTRY[backend_name].layout
    cells = chapter_run(backend_name, way)["cells"]
    shown = [shape for cell in cells if cell["status"] == "ran" and cell["out"] for shape in shapes_in(cell["out"])]
    assert shown == [in_layout(shape, layout) for shape in BLOCK_SHAPES]
    summaries = [cell["printed"] for cell in cells if "layer_summary" in cell["first_line"]]
    assert len(summaries) == 1
    expected = list(SUMMARY_SHAPES)
    if backend_name == "mxnet" and way == "book":
        # The book's MXNet ResNet adds the pooling and the dense layer to self.net one by one (the other tabs
        # group them in one Sequential), so its summary has a line for the pooled (1, 512, 1, 1) too.
        expected.insert(-1, (1, 512, 1, 1))
    assert shapes_in(summaries[0]) == [in_layout(shape, layout) for shape in expected]


def test_package_way_replaces_exactly_the_defining_cells(backend_name):
    book = {cell["index"]: cell for cell in chapter_run(backend_name, "book")["cells"]}
    package = chapter_run(backend_name, "package")["cells"]
    replaced = [cell["index"] for cell in package if cell["status"] == "package"]
    assert replaced and all(book[i]["status"] == "ran" and book[i]["out"] is None for i in replaced)
    defined = " ".join(book[i]["first_line"] for i in replaced)
    for name in ("class Residual", "class ResNet(", "class ResNet18(", "class ResNeXtBlock", "add_to_class"):
        assert name in defined


@pytest.mark.parametrize("way", WAYS)
def test_training_cell_trains(backend_name, way):
    history = chapter_run(backend_name, way)["history"]
    assert [row["epoch"] for row in history] == [1, 2]
    for row in history:
        assert all(math.isfinite(row[key]) for key in ("train_loss", "val_loss", "val_acc"))
        assert 0 <= row["val_acc"] <= 1
    # 10 classes: an untrained model starts near log(10); two steps of SGD at lr 0.01 keep it finite and near
    assert np.isfinite(history[-1]["train_loss"]) and history[-1]["train_loss"] < 10


def test_stand_in_refuses_what_it_does_not_do():
    from resnet import d2l

    with pytest.raises(ValueError, match="resize must be square"):
        d2l.FashionMNIST(resize=(96, 64), dataset="digits")
    with pytest.raises(ValueError, match="gradient clipping"):
        d2l.Trainer(max_epochs=1, gradient_clip_val=1)
    with pytest.raises(ValueError, match="max_epochs must be a positive integer"):
        d2l.Trainer(max_epochs=0)
    with pytest.raises(AttributeError, match="the book's modules are torch, tensorflow, jax, mxnet"):
        d2l.pytorch  # noqa: B018
    with pytest.raises(TypeError, match="neither a model of this package"):
        d2l.Trainer(max_epochs=1).fit(object(), d2l.FashionMNIST(dataset="digits", num_examples=4))


def test_stand_in_data_and_hyperparameters():
    from resnet import d2l

    data = d2l.FashionMNIST(batch_size=4, resize=(12, 12), dataset="digits", num_examples=10)
    assert (data.batch_size, data.size, data.root) == (4, 12, None)
    x, y = next(iter(data.batches(True)))
    assert x.shape == (4, 1, 12, 12) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    assert len(data.batches(False)) == 3 and data.text_labels([0, 9]) == ["0", "9"]

    class Thing(d2l.HyperParameters):
        def __init__(self, a, b=2, _hidden=3):
            self.save_hyperparameters(ignore=["b"])

    thing = Thing(1)
    assert thing.hparams == {"a": 1} and thing.a == 1 and not hasattr(thing, "b")

    class Base:
        pass

    @d2l.add_to_class(Base)
    def double(self, v):
        return 2 * v

    assert Base().double(4) == 8
