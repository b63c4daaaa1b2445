"""Training the chapter's recipe in every backend: learning, agreement with the reference step by step, resuming
an interrupted run, checkpoints, the compiled train step, and the precision a model is built in."""

from __future__ import annotations

import csv
import dataclasses
import json
import os

import numpy as np
import pytest

import resnet.rundir as rundir
import resnet.training as training
from resnet import specs
from resnet.data import Batches, load_digits
from resnet.init import initial_weights
from resnet.reference import Reference, reference_weights
from resnet.training import TrainConfig, fit
from resnet.weights import OldPreactLayoutError, read_weights, write_weights

QUICK = TrainConfig(epochs=2, batch_size=64, lr=0.05, resize=16, seed=0)


@pytest.fixture(scope="module")
def digits():
    return load_digits()


#: Two epochs of 16 steps on the first 512 digits: 0.59 and 0.66 validation accuracy in PyTorch (measured).
LEARNS = dataclasses.replace(QUICK, batch_size=32, max_train_examples=512, max_val_examples=128)


def test_short_run_learns(rn, digits, tmp_path):
    history = fit(rn.ResNet18(), digits, LEARNS, tmp_path, progress=False, log=lambda line: None)
    losses = history.column("train_loss")
    assert losses[-1] < losses[0]
    assert history.rows[-1]["val_acc"] > 0.5  # chance is 0.1
    assert {"metrics.csv", "curves.png", "last.safetensors", "run.json"} <= set(os.listdir(tmp_path))
    with open(tmp_path / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["epoch", "train_loss", "val_loss", "val_acc", "images_per_s", "dataset"]
    assert [int(r["epoch"]) for r in rows] == [1, 2] and rows[1]["dataset"] == "digits"
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


FIRST_STEPS = TrainConfig(epochs=1, batch_size=32, lr=0.01, resize=16, seed=0)


@pytest.fixture(scope="module")
def reference_run(digits):
    """The reference's first 20 SGD steps from a neutral initial weights file: batches, losses, weights."""
    data = digits.first(20 * FIRST_STEPS.batch_size, 32)
    spec = specs.book_resnet(specs.RESNET18_ARCH, 10)
    reference = Reference(spec, initial_weights(spec, (1, 1, 16, 16), seed=5))
    batches = Batches(data.train_images, data.train_labels, FIRST_STEPS.batch_size, 16, shuffle=True, seed=0)
    steps = []
    for x, labels in batches.epoch(1):
        before = {name: value.copy() for name, value in reference.weights.items()}
        loss = reference.sgd_step(x, labels, FIRST_STEPS.lr)
        steps.append((x, labels, before, loss, {name: value.copy() for name, value in reference.weights.items()}))
    return data, steps


def test_first_20_steps_match_reference_in_float64(rn, reference_run, tmp_path):
    """Same --init file and seed, float64: all 20 free-running steps give the reference's losses (so every
    backend's are the same), and the weights after them are the reference's.

    Measured: PyTorch and JAX agree with the reference to 6e-15 (losses) and 3e-15 (weights). Keras and
    MXNet hold the learning rate in float32 (0.01 becomes 0.0099999998), which moves their losses by up to
    2.0e-8 relative and their weights by up to 8.1e-9 (running statistics; trainable weights 3.9e-10), the same
    numbers in both: hence the bounds, 5e-8 and 2e-8. (MXNet's BatchNorm momentum, once float32 too, moved its
    running statistics by 8e-8; it is exact now.) Weights are compared relative to each tensor's largest value,
    or absolutely below 1.
    """
    data, steps = reference_run
    write_weights(steps[0][2], tmp_path / "init.safetensors", {})
    model = rn.ResNet18(dtype="float64")
    history = fit(model, data, FIRST_STEPS, init=tmp_path / "init.safetensors", progress=False, log=lambda line: None)
    assert len(history.step_losses) == len(steps) == 20
    np.testing.assert_allclose(history.step_losses, [loss for *_, loss, _ in steps], rtol=5e-8)
    final, expected = rn.get_arrays(model), steps[-1][4]
    for name, value in expected.items():
        worst = float(np.abs(final[name] - value).max()) / max(1.0, float(np.abs(value).max()))
        assert worst <= 2e-8, f"{name} after 20 steps differs from the reference's by {worst:.2g} (relative)"


def test_first_steps_match_reference(rn, reference_run, tmp_path):
    """float32, the default: the trainer's first steps give the reference's losses, and each of the first 20
    steps, taken from the reference's weights, gives its loss and weights.

    Why not 20 free-running steps as in float64: a float32 run drifts from a float64 one after a few steps
    whatever the implementation (PyTorch float32 against PyTorch float64, measured: 1e-5 relative at step 3,
    1e-3 by step 5-15, depending on the data), because ReLU and max-pooling decisions that flip on rounding
    change the path. So the free-running comparison covers the first 3 steps, and all 20 steps are checked
    one at a time along the reference's path.
    """
    data, steps = reference_run
    write_weights(steps[0][2], tmp_path / "init.safetensors", {})
    history = fit(
        rn.ResNet18(), data, FIRST_STEPS, init=tmp_path / "init.safetensors", progress=False, log=lambda line: None
    )
    np.testing.assert_allclose(history.step_losses[:3], [loss for *_, loss, _ in steps[:3]], rtol=1e-4)

    model = rn.ResNet18()
    rn.build(model, (1, 1, 16, 16))
    train_step = rn.make_train_step(model, FIRST_STEPS.lr)
    for number, (x, labels, before, loss, after) in enumerate(steps, 1):
        rn.set_arrays(model, {name: value.astype(np.float32) for name, value in before.items()})
        assert train_step(x, labels) == pytest.approx(loss, rel=1e-4), f"loss of step {number}"
        new = rn.get_arrays(model)
        worst = max(float(np.abs(new[name] - after[name]).max()) for name in after)
        assert worst <= 1e-4, f"step {number}: weights differ from the reference's by {worst:.2g}"


def test_resume_gives_the_uninterrupted_result(rn, digits, tmp_path, monkeypatch):
    data = digits.first(256, 64)
    whole = fit(rn.ResNet18(), data, QUICK, tmp_path / "whole", progress=False, log=lambda line: None)

    real_epoch = training._train_epoch

    def killed_in_epoch_2(step, batches, epoch, *args):
        if epoch == 2:
            raise KeyboardInterrupt  # the run dies during its second epoch
        return real_epoch(step, batches, epoch, *args)

    monkeypatch.setattr(training, "_train_epoch", killed_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        fit(rn.ResNet18(), data, QUICK, tmp_path / "killed", progress=False, log=lambda line: None)
    monkeypatch.setattr(training, "_train_epoch", real_epoch)
    assert read_weights(tmp_path / "killed" / "last.safetensors")[1]["epoch"] == "1"
    resumed = fit(rn.ResNet18(), data, QUICK, tmp_path / "killed", resume=True, progress=False, log=lambda line: None)

    drop = lambda rows: [{k: v for k, v in row.items() if k != "images_per_s"} for row in rows]  # noqa: E731
    assert drop(resumed.rows) == drop(whole.rows)
    a, _ = read_weights(tmp_path / "whole" / "last.safetensors")
    b, _ = read_weights(tmp_path / "killed" / "last.safetensors")
    for name in a:
        np.testing.assert_allclose(b[name], a[name], atol=1e-6, err_msg=name)


def test_checkpoint_evaluates_the_same_in_the_reference(rn, digits, tmp_path):
    """A checkpoint trained here gives the same accuracy in the reference (and so in every other backend)."""
    data = digits.first(256, 96)
    history = fit(rn.ResNet18(), data, TrainConfig(1, 64, 0.05, 16), tmp_path, progress=False, log=lambda line: None)
    arrays, _ = read_weights(tmp_path / "last.safetensors")
    reference = Reference(specs.book_resnet(specs.RESNET18_ARCH, 10), arrays)
    x, labels = next(Batches(data.val_images, data.val_labels, 96, 16).epoch(0))
    accuracy = float((reference.forward(x).argmax(axis=1) == labels).mean())
    assert accuracy == pytest.approx(history.rows[-1]["val_acc"], abs=1e-6)  # metrics keep 6 decimals


def test_resume_refuses_another_model(rn, digits, tmp_path):
    data = digits.first(64, 32)
    fit(rn.ResNet18(), data, TrainConfig(1, 32, 0.05, 16), tmp_path, progress=False, log=lambda line: None)
    with pytest.raises(ValueError, match="saved from a different model"):
        fit(
            rn.ResNet(((1, 64), (1, 128))),
            data,
            TrainConfig(2, 32, 0.05, 16),
            tmp_path,
            resume=True,
            progress=False,
            log=lambda line: None,
        )
    with pytest.raises(ValueError, match="other settings .*lr: 0.05 -> 0.1"):
        fit(
            rn.ResNet18(),
            data,
            TrainConfig(2, 32, 0.1, 16),
            tmp_path,
            resume=True,
            progress=False,
            log=lambda line: None,
        )
    with pytest.raises(ValueError, match="other settings .*lr: 0.05 -> 0.1"):  # the model's own lr, the book's 0.1
        fit(
            rn.ResNet18(),
            data,
            TrainConfig(2, 32, None, 16),
            tmp_path,
            resume=True,
            progress=False,
            log=lambda line: None,
        )
    resumed = fit(
        rn.ResNet18(lr=0.05),
        data,
        TrainConfig(2, 32, None, 16),
        tmp_path,
        resume=True,
        progress=False,
        log=lambda line: None,
    )  # the same lr, kept by the model
    assert [row["epoch"] for row in resumed.rows] == [1, 2]


#: A small pre-activation model as today (its stem: the convolution and the max pooling) and as release 0.1.0
#: made it (BN and ReLU between them: ``b1.bn.*``); and a plain ResNet of the same stages.
PREACT = specs.resnet_spec("preact_basic", (1, 1), (8, 16), 10, 3, stem_channels=16)
OLD_PREACT = dataclasses.replace(PREACT, stem=dataclasses.replace(PREACT.stem, preact=False))
PLAIN = specs.resnet_spec("basic", (1, 1), (8, 16), 10, 3, stem_channels=16)


@pytest.mark.parametrize(
    "saved, error, message",
    [
        (
            OLD_PREACT,
            OldPreactLayoutError,
            r"(?s)old layout .*b1\.bn\.bias.*drop the b1\.bn\.\* tensors.*cannot be resumed",
        ),
        (PLAIN, ValueError, r"saved from a different model \(resnet18\); resume with the same --model"),
    ],
    ids=["old_preact_layout", "another_model"],
)
def test_resume_names_why_the_checkpoint_is_of_another_model(tmp_path, saved, error, message):
    """Resuming a pre-activation run whose checkpoint has the old layout (its spec differs only because the stem
    changed) says so, with what to do, as loading such a file does (``OldPreactLayoutError``), not that the run
    was of another model; a checkpoint of another model still says that. Framework-free: the header and names."""
    arrays = reference_weights(saved, (1, 3, 16, 16), seed=0)
    header = {"spec": repr(saved), "epoch": "1", "model": "resnet18"}
    write_weights(arrays, tmp_path / rundir.CHECKPOINT, header)
    with pytest.raises(error, match=message) as caught:
        rundir.resume_point(tmp_path, PREACT, {})
    assert isinstance(caught.value, OldPreactLayoutError) == (saved is OLD_PREACT)


def test_lr_none_trains_with_the_models_own(rn, digits, tmp_path):
    """``TrainConfig(lr=None)`` (the default) takes the book's ``model.lr``: ``ResNet18(lr=0.05)`` trains as
    ``TrainConfig(lr=0.05)`` does, and run.json records the learning rate used, with typed values."""
    data = digits.first(128, 32)
    logged = []
    own = fit(
        rn.ResNet18(lr=0.05), data, TrainConfig(1, 64, None, 16), tmp_path / "own", progress=False, log=logged.append
    )
    given = fit(
        rn.ResNet18(), data, TrainConfig(1, 64, 0.05, 16), tmp_path / "given", progress=False, log=lambda line: None
    )
    default = fit(
        rn.ResNet18(), data, TrainConfig(1, 64, None, 16), tmp_path / "default", progress=False, log=lambda line: None
    )
    np.testing.assert_allclose(own.step_losses, given.step_losses, rtol=1e-6)
    assert own.step_losses[0] == pytest.approx(default.step_losses[0], rel=1e-6)  # the same start
    assert abs(own.step_losses[1] - default.step_losses[1]) > 1e-4  # a step of 0.05, not the book's 0.1
    info = {name: json.loads((tmp_path / name / "run.json").read_text()) for name in ("own", "default")}
    assert info["own"]["lr"] == 0.05 and info["default"]["lr"] == specs.DEFAULT_LR == 0.1
    assert next(line for line in logged if line.startswith("training on ")).endswith(" with learning rate 0.05")
    typed = {k: info["own"][k] for k in ("epochs", "batch_size", "lr", "resize", "seed", "mixed_precision")}
    assert typed == {"epochs": 1, "batch_size": 64, "lr": 0.05, "resize": 16, "seed": 0, "mixed_precision": False}
    assert info["own"]["note"] == data.note and info["own"]["note_details"] == []


def test_train_config_checks_lr():
    assert TrainConfig().lr is None and TrainConfig(lr=1).lr == 1
    for bad in (0, -0.1, float("nan"), float("inf"), True, "0.1"):
        with pytest.raises(ValueError, match="lr must be a positive, finite number"):
            TrainConfig(lr=bad)


@pytest.mark.parametrize(
    "saved, value, same",
    [
        ("0.05", 0.05, True),
        ("1", 1.0, True),
        ("0.1", 0.05, False),
        ("16", 16, True),
        ("None", None, True),
        ("16", None, False),
        ("False", False, True),
        ("True", False, False),
        ("float32", "float32", True),
        (None, 0.05, False),
        ("abc", 0.05, False),
    ],
)
def test_checkpoint_settings_compare_as_values(saved, value, same):
    """A checkpoint's header holds its settings as text (old and new alike): they compare with the run's
    typed settings as values, so ``lr "1"`` (an int lr of an older run) resumes with ``lr=1.0``."""
    assert rundir._same_setting(saved, value) is same


def test_offline_note_is_logged_and_stored_whole(rn, digits, tmp_path):
    details = (
        "train-images-idx3-ubyte.gz: http://x/train-images-idx3-ubyte.gz failed (refused)",
        "Put the four files ... into /data/fashion-mnist",
    )
    data = dataclasses.replace(digits.first(64, 32), note="WARNING: offline", details=details)
    logged = []
    fit(rn.ResNet18(), data, TrainConfig(1, 64, 0.05, 8), tmp_path, progress=False, log=logged.append)
    assert logged[:3] == ["WARNING: offline", *(f"  {line}" for line in details)]
    info = json.loads((tmp_path / "run.json").read_text())
    assert info["note"] == "WARNING: offline" and info["note_details"] == list(details)


def test_compile_option_gives_the_same_step(rn):
    """``compile=True`` (torch.compile in PyTorch; the other backends always compile) takes the same step."""
    x = np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32)
    labels = np.array([0, 1, 2, 1])
    losses = []
    for compile in (False, True):
        model = rn.ResNet(((1, 64),), num_classes=3)
        rn.build(model, x.shape)
        rn.set_arrays(model, initial_weights(model.spec, x.shape, seed=1))
        losses.append([rn.make_train_step(model, 0.1, compile=compile)(x, labels) for _ in range(2)])
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)


def test_dtype_is_checked(rn):
    with pytest.raises(ValueError, match=r"dtype must be one of float32, float64 .*got 'float16'"):
        rn.ResNet18(dtype="float16")
    assert rn.dtype_of(rn.ResNet18()) == "float32" and rn.dtype_of(rn.ResNet18(dtype=np.float64)) == "float64"


def test_max_examples_limit_the_run_and_must_stay_on_resume(rn, digits, tmp_path):
    """``max_train_examples`` / ``max_val_examples`` train and validate on the first that many digits; a resumed
    run must keep them."""
    config = TrainConfig(1, 32, 0.05, 8, max_train_examples=64, max_val_examples=16)
    history = fit(rn.ResNet18(), digits, config, tmp_path, progress=False, log=lambda line: None)
    assert len(history.step_losses) == 2
    assert (history.rows[0]["val_acc"] * 16) == pytest.approx(round(history.rows[0]["val_acc"] * 16), abs=1e-4)
    assert json.loads((tmp_path / "run.json").read_text())["max_train_examples"] == 64
    more = dataclasses.replace(config, epochs=2, max_train_examples=96)
    with pytest.raises(ValueError, match=r"other settings \(max_train_examples: 64 -> 96\)"):
        fit(rn.ResNet18(), digits, more, tmp_path, resume=True, progress=False, log=lambda line: None)


def test_checkpoint_from_before_a_setting_existed_resumes(rn, digits, tmp_path):
    """A run saved before ``dtype`` and ``mixed_precision`` were recorded resumes with their values then
    (float32, no mixed precision), and refuses another value with a message naming it."""
    data = digits.first(128, 32)
    one_epoch = TrainConfig(epochs=1, batch_size=64, lr=0.05, resize=16, seed=0)
    fit(rn.ResNet18(), data, one_epoch, tmp_path, progress=False, log=lambda line: None)
    arrays, header = read_weights(tmp_path / "last.safetensors")
    added_later = ("dtype", "mixed_precision", "max_train_examples", "max_val_examples")
    old_header = {k: v for k, v in header.items() if k not in added_later}
    write_weights(arrays, tmp_path / "last.safetensors", old_header)
    two_epochs = TrainConfig(epochs=2, batch_size=64, lr=0.05, resize=16, seed=0)
    history = fit(rn.ResNet18(), data, two_epochs, tmp_path, resume=True, progress=False, log=lambda line: None)
    assert [row["epoch"] for row in history.rows] == [1, 2]
    write_weights(arrays, tmp_path / "last.safetensors", {**old_header, "epoch": "1"})
    with pytest.raises(ValueError, match=r"other settings \(dtype: float32 -> float64\)"):
        fit(
            rn.ResNet18(dtype="float64"), data, two_epochs, tmp_path, resume=True, progress=False, log=lambda line: None
        )
