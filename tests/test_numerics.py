"""Issue 3: the same weights give the same numbers in every backend, checked against the NumPy reference.

Tolerances reached (float32 backends against the float64 reference) are the ones asserted below: single
blocks to 1e-5 absolute, ResNets to 1e-4, gradients to 1e-4 of the largest gradient of the same tensor
(plus 1e-5 of the largest of all, for the conv biases in front of BatchNorm whose true gradient is 0).
"""

from __future__ import annotations

import numpy as np
import pytest

import resnet
from cases import (
    BLOCK_CASES,
    GOLDEN_CASES,
    GROUPED_PATH_CASES,
    RESNET18,
    SGD_LR,
    SMALL_RESNET,
    expected_values,
    golden,
    section,
)


def tolerance(case) -> float:
    return 1e-4 if case.classifier else 1e-5


def loaded(rn, case, arrays):
    """The case's native model with the golden weights assigned."""
    model = case.make(rn)
    rn.build(model, case.input_shape)
    rn.set_arrays(model, section(arrays, "weights"))
    return model


def assert_close(actual, expected, atol, what):
    error = float(np.max(np.abs(np.asarray(actual, np.float64) - expected))) if np.size(expected) else 0.0
    assert np.shape(actual) == np.shape(expected), f"{what}: shape {np.shape(actual)} != {np.shape(expected)}"
    assert error <= atol, f"{what}: max abs error {error:.3g} > {atol:.3g}"


def assert_grads_close(grads, expected):
    assert sorted(grads) == sorted(expected), "gradient names differ from the reference's"
    overall = max(float(np.abs(g).max()) for g in expected.values())
    for name, reference in expected.items():
        atol = 1e-4 * float(np.abs(reference).max()) + 1e-5 * overall
        assert_close(grads[name], reference, atol, f"gradient of {name}")


@pytest.mark.parametrize("case", GOLDEN_CASES, ids=lambda c: c.name)
def test_golden_file_matches_reference(case):
    """The golden files are what the reference computes today (float32 storage)."""
    stored = golden(case)
    fresh = expected_values(case)
    assert sorted(stored) == sorted(fresh)
    for name, value in fresh.items():
        assert_close(stored[name], value, 1e-6 * max(1.0, float(np.abs(value).max())), name)


@pytest.mark.parametrize("case", GOLDEN_CASES, ids=lambda c: c.name)
def test_inference_matches_reference(rn, case):
    arrays = golden(case)
    model = loaded(rn, case, arrays)
    assert_close(resnet.forward(model, arrays["input"]), arrays["inference"], tolerance(case), "inference output")


@pytest.mark.parametrize("case", GOLDEN_CASES, ids=lambda c: c.name)
def test_training_pass_matches_reference(rn, case):
    """Training-mode output, the gradient of every weight, and the running statistics after one pass."""
    arrays = golden(case)
    model = loaded(rn, case, arrays)
    output, grads = rn.vjp(model, arrays["input"], arrays["output_grad"])
    assert_close(output, arrays["training"], tolerance(case), "training-mode output")
    assert_grads_close(grads, section(arrays, "grad"))
    after = rn.get_arrays(model)
    for name, value in section(arrays, "after_training").items():
        assert_close(after[name], value, 1e-5, f"{name} after one training pass")


@pytest.mark.parametrize("case", GROUPED_PATH_CASES, ids=lambda c: c.name)
def test_every_grouped_convolution_path_matches_reference(rn, case):
    """Backends compute a grouped convolution in whichever way was fastest for its shape (see each backend's
    convolution layer); every way gives the reference's outputs and gradients."""
    expected = expected_values(case)
    model = loaded(rn, case, expected)
    assert_close(resnet.forward(model, expected["input"]), expected["inference"], tolerance(case), "inference output")
    output, grads = rn.vjp(model, expected["input"], expected["output_grad"])
    assert_close(output, expected["training"], tolerance(case), "training-mode output")
    assert_grads_close(grads, section(expected, "grad"))


def test_one_sgd_step_matches_reference(rn):
    """One SGD step from the same weights on the same batch gives the reference's new weights."""
    arrays = golden(SMALL_RESNET)
    model = loaded(rn, SMALL_RESNET, arrays)
    loss = rn.make_train_step(model, SGD_LR)(arrays["input"], arrays["labels"])
    assert abs(loss - float(arrays["sgd_loss"][0])) <= 1e-5 * max(1.0, abs(float(arrays["sgd_loss"][0])))
    after = rn.get_arrays(model)
    for name, value in section(arrays, "after_sgd").items():
        assert_close(after[name], value, 2e-5, f"{name} after one SGD step")


@pytest.fixture(scope="module")
def resnet18_expected():
    return expected_values(RESNET18)


def test_resnet18_inference_matches_reference(rn, resnet18_expected):
    model = loaded(rn, RESNET18, resnet18_expected)
    output = resnet.forward(model, resnet18_expected["input"])
    assert_close(output, resnet18_expected["inference"], 1e-4, "ResNet-18 inference output")


def test_resnet18_training_pass_matches_reference(rn, resnet18_expected):
    model = loaded(rn, RESNET18, resnet18_expected)
    output, grads = rn.vjp(model, resnet18_expected["input"], resnet18_expected["output_grad"])
    assert_close(output, resnet18_expected["training"], 1e-4, "ResNet-18 training-mode output")
    assert_grads_close(grads, section(resnet18_expected, "grad"))
    after = rn.get_arrays(model)
    for name, value in section(resnet18_expected, "after_training").items():
        assert_close(after[name], value, 1e-5, f"{name} after one training pass")


def test_resnet18_sgd_step_matches_reference(rn, resnet18_expected):
    model = loaded(rn, RESNET18, resnet18_expected)
    x, labels = resnet18_expected["input"], resnet18_expected["labels"]
    loss = rn.make_train_step(model, SGD_LR)(x, labels)
    assert abs(loss - float(resnet18_expected["sgd_loss"][0])) <= 1e-4
    after = rn.get_arrays(model)
    for name, value in section(resnet18_expected, "after_sgd").items():
        assert_close(after[name], value, 1e-4, f"{name} after one SGD step")


def test_training_forward_updates_running_statistics(rn):
    """``resnet.forward(..., training=True)`` updates BatchNorm statistics as the framework would."""
    case = BLOCK_CASES[1]
    arrays = golden(case)
    model = loaded(rn, case, arrays)
    output = resnet.forward(model, arrays["input"], training=True)
    assert_close(output, arrays["training"], 1e-5, "training-mode output")
    after = rn.get_arrays(model)
    for name, value in section(arrays, "after_training").items():
        assert_close(after[name], value, 1e-5, f"{name} after resnet.forward(training=True)")
