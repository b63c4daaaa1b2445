"""The same weights give the same numbers in every backend, checked against the NumPy float64 reference: the
chapter's blocks and the family's, small models made of them (through golden files), the chapter's ResNet-18, the
multi-GPU section's ResNet-18 (its stem without max pooling) and the family's ResNet-50, ResNeXt-50 and
pre-activation ResNet-50 (the reference computed here).

Tolerances reached (float32 backends against the float64 reference) are the ones asserted below: single
blocks to 1e-5 absolute, ResNets to 1e-4, gradients to 1e-4 of the largest gradient of the same tensor
(plus 1e-5 of the largest of all, for the conv biases in front of BatchNorm whose true gradient is 0).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from helpers import (
    CHAPTER_BLOCK_CASES,
    GOLDEN_CASES,
    GROUPED_PATH_CASES,
    RESNET18,
    RESNET18_MULTIGPU,
    SGD_LR,
    assert_close,
    assert_grads_close,
    case_ids,
    expected_values,
    golden,
    loaded,
    section,
    tolerance,
)

import resnet
from resnet import specs
from resnet.reference import Reference, reference_weights

#: The cases that end in class scores: the chapter's small ResNet and the family's two small models.
CLASSIFIER_CASES = [case for case in GOLDEN_CASES if case.classifier]

# ------------------------------------------------------------------ blocks and small models: golden files


@pytest.mark.parametrize("case", GOLDEN_CASES, ids=case_ids)
def test_golden_file_matches_reference(case):
    """The golden files are what the reference computes today (float32 storage)."""
    stored = golden(case)
    fresh = expected_values(case)
    assert sorted(stored) == sorted(fresh)
    for name, value in fresh.items():
        assert_close(stored[name], value, 1e-6 * max(1.0, float(np.abs(value).max())), name)


@pytest.mark.parametrize("case", GOLDEN_CASES, ids=case_ids)
def test_inference_matches_reference(rn, case):
    arrays = golden(case)
    model = loaded(rn, case, arrays)
    assert_close(resnet.forward(model, arrays["input"]), arrays["inference"], tolerance(case), "inference output")
    assert resnet.output_shape(model, case.input_shape) == arrays["inference"].shape


@pytest.mark.parametrize("case", GOLDEN_CASES, ids=case_ids)
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


@pytest.mark.parametrize("case", CLASSIFIER_CASES, ids=case_ids)
def test_sgd_step_and_predict_match_reference(rn, case):
    """The compiled prediction gives the reference's class scores, and one SGD step from the same weights on the
    same batch gives the reference's loss and new weights."""
    arrays = golden(case)
    model = loaded(rn, case, arrays)
    assert_close(rn.make_predict(model)(arrays["input"]), arrays["inference"], 1e-4, "make_predict output")
    loss = rn.make_train_step(model, SGD_LR)(arrays["input"], arrays["labels"])
    assert abs(loss - float(arrays["sgd_loss"][0])) <= 1e-5 * max(1.0, abs(float(arrays["sgd_loss"][0])))
    after = rn.get_arrays(model)
    for name, value in section(arrays, "after_sgd").items():
        assert_close(after[name], value, 2e-5, f"{name} after one SGD step")


def test_training_forward_updates_running_statistics(rn):
    """``resnet.forward(..., training=True)`` updates BatchNorm statistics as the framework would."""
    case = CHAPTER_BLOCK_CASES[1]
    arrays = golden(case)
    model = loaded(rn, case, arrays)
    output = resnet.forward(model, arrays["input"], training=True)
    assert_close(output, arrays["training"], 1e-5, "training-mode output")
    after = rn.get_arrays(model)
    for name, value in section(arrays, "after_training").items():
        assert_close(after[name], value, 1e-5, f"{name} after resnet.forward(training=True)")


# ------------------------------------------------------------------- grouped convolutions: every code path


@pytest.mark.parametrize("case", GROUPED_PATH_CASES, ids=case_ids)
def test_every_grouped_convolution_path_matches_reference(rn, case):
    """Backends compute a grouped convolution in whichever way was fastest for its shape (see each backend's
    convolution layer); every way gives the reference's outputs and gradients."""
    expected = expected_values(case)
    model = loaded(rn, case, expected)
    assert_close(resnet.forward(model, expected["input"]), expected["inference"], tolerance(case), "inference output")
    output, grads = rn.vjp(model, expected["input"], expected["output_grad"])
    assert_close(output, expected["training"], tolerance(case), "training-mode output")
    assert_grads_close(grads, section(expected, "grad"))


# ------------------------------------------- the chapter's ResNet-18 and the multi-GPU section's (its small stem)


@pytest.fixture(scope="module", params=[RESNET18, RESNET18_MULTIGPU], ids=case_ids)
def resnet18_case(request):
    """(case, the reference's numbers for it): each ResNet-18 with its weights, inputs, outputs and gradients."""
    return request.param, expected_values(request.param)


def test_resnet18_inference_matches_reference(rn, resnet18_case):
    case, expected = resnet18_case
    model = loaded(rn, case, expected)
    output = resnet.forward(model, expected["input"])
    assert_close(output, expected["inference"], 1e-4, f"{case.name} inference output")


def test_resnet18_training_pass_matches_reference(rn, resnet18_case):
    case, expected = resnet18_case
    model = loaded(rn, case, expected)
    output, grads = rn.vjp(model, expected["input"], expected["output_grad"])
    assert_close(output, expected["training"], 1e-4, f"{case.name} training-mode output")
    assert_grads_close(grads, section(expected, "grad"))
    after = rn.get_arrays(model)
    for name, value in section(expected, "after_training").items():
        assert_close(after[name], value, 1e-5, f"{name} after one training pass")


def test_resnet18_sgd_step_matches_reference(rn, resnet18_case):
    case, expected = resnet18_case
    model = loaded(rn, case, expected)
    x, labels = expected["input"], expected["labels"]
    loss = rn.make_train_step(model, SGD_LR)(x, labels)
    assert abs(loss - float(expected["sgd_loss"][0])) <= 1e-4
    after = rn.get_arrays(model)
    for name, value in section(expected, "after_sgd").items():
        assert_close(after[name], value, 1e-4, f"{name} after one SGD step")


# ----------------------------------------------------------------------------- the family's full models


@functools.cache
def reference_run(name: str) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Weights, a 2x3x32x32 input and the reference's inference output for the family's model ``name``.

    Random weights let activations grow through 16 or more blocks (logits near 200 for ResNet-50), so the
    dense layer is rescaled to make the logits of order 1, where an absolute tolerance of 1e-4 is meaningful.
    """
    spec, shape = specs.family_spec(name), (2, 3, 32, 32)
    weights = reference_weights(spec, shape, seed=5)
    x = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    bias = weights["last.fc.bias"].astype(np.float64)
    logits = Reference(spec, weights).forward(x) - bias
    scale = np.float32(1.0 / np.abs(logits).max())
    weights["last.fc.weight"] = weights["last.fc.weight"] * scale
    return weights, x, logits * np.float64(scale) + bias


@pytest.mark.parametrize("name", ["resnet50", "resnext50_32x4d", "preact_resnet50"])
def test_model_inference_matches_reference(rn, name):
    weights, x, expected = reference_run(name)
    model = getattr(rn, name)()
    rn.build(model, x.shape)
    rn.set_arrays(model, weights)
    assert_close(resnet.forward(model, x), expected, 1e-4, f"{name} inference output")


# ------------------------------------------------------------------ float64: the reference's numbers, to 1e-10

#: Small models in float64: ResNeXt bottlenecks whose grouped convolutions take each of MXNet's paths (64
#: channels in 8 groups: chunks of 16 block-diagonal channels; 128 in 8: Gluon's own grouped kernel), and a
#: pre-activation model (its stem's convolution straight into the max pooling, negative values included).
FLOAT64_SPECS = {
    "resnext_chunked": specs.resnet_spec("bottleneck", (1, 1), (32, 64), 10, 3, 8, 16, stem_channels=16),
    "preact_bottleneck": specs.resnet_spec("preact_bottleneck", (2, 1), (8, 16), 10, 3, stem_channels=16),
}


@pytest.mark.parametrize("name", FLOAT64_SPECS)
def test_float64_model_matches_reference_to_1e10(rn, name):
    """A float64 model computes the reference's float64 numbers: inference and training-mode outputs, every
    weight's gradient and the BatchNorm running averages after a training pass (MXNet's with the exact momentum,
    not its operator's float32 one), each within 1e-10 of the largest value of its tensor (absolute below 1)."""
    spec, shape = FLOAT64_SPECS[name], (2, 3, 16, 16)
    weights = {k: v.astype(np.float64) for k, v in reference_weights(spec, shape, seed=1).items()}
    x = np.random.default_rng(2).standard_normal(shape)
    output_grad = np.random.default_rng(3).standard_normal((2, 10))
    model = rn.ResNet(spec=spec, dtype="float64")
    rn.build(model, shape)
    rn.set_arrays(model, weights)
    assert rn.dtype_of(model) == "float64"

    def close(actual, expected, what):
        assert_close(actual, expected, 1e-10 * max(1.0, float(np.abs(expected).max())), what)

    close(resnet.forward(model, x), Reference(spec, weights).forward(x), "inference output")
    reference = Reference(spec, weights)
    expected_output, expected_grads = reference.vjp(x, output_grad)
    output, grads = rn.vjp(model, x, output_grad)
    close(output, expected_output, "training-mode output")
    for tensor, value in expected_grads.items():
        if tensor != "input":
            close(grads[tensor], value, f"gradient of {tensor}")
    after = rn.get_arrays(model)
    running = [tensor for tensor in reference.weights if "running" in tensor]
    assert running
    for tensor in running:
        close(after[tensor], reference.weights[tensor], f"{tensor} after one training pass")
