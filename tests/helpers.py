"""What the test modules share: the backends under test, the numerical cases and their golden files, and the
comparisons with the NumPy reference. Test modules import from here, never from each other or from conftest.py;
``write_golden.py`` writes the golden files from the same cases.

Each case names a block or model (built from the backend under test by ``make``) and an NCHW input shape, and
is turned into weights and inputs by the reference's seeded initializer. A golden file holds what the reference
computes for a case; every backend is held to those numbers.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from resnet import specs
from resnet.reference import Reference, reference_weights
from resnet.registry import BACKENDS, REGISTRY

# ------------------------------------------------------------------------------------ the backends under test

#: The registered backends whose framework is installed here (found without importing it).
FOUND = [name for name in BACKENDS if importlib.util.find_spec(REGISTRY[name].framework) is not None]
#: The backends that ``RESNET_TEST_BACKENDS`` (comma-separated; the nox matrix sets it) requires.
REQUIRED = [name.strip() for name in os.environ.get("RESNET_TEST_BACKENDS", "").split(",") if name.strip()]
#: The backends under test: exactly the required ones if any are named (a missing one is then an error, so a
#: broken environment can never pass as a smaller matrix), else every one found.
INSTALLED = [name for name in BACKENDS if name in REQUIRED] if REQUIRED else FOUND

#: ``RESNET_TEST_HUB=1`` (nox's ``cross`` session sets it) requires the independent implementations whose
#: checkpoints ``resnet convert`` reads (transformers, keras-hub): a missing one is then an error, not a skip.
REQUIRE_HUB = os.environ.get("RESNET_TEST_HUB") == "1"


def needs_library(*modules: str, install: str) -> Callable:
    """Marks a test ``hub`` (the backend sessions deselect those; ``cross`` runs them) and skips it where one of
    ``modules`` is not installed, unless ``RESNET_TEST_HUB`` requires them (then the import fails the test)."""
    missing = [module for module in modules if importlib.util.find_spec(module) is None]

    def mark(test: Callable) -> Callable:
        reason = f"{' and '.join(missing)} not installed here ({install}; nox -s cross runs these)"
        skip = pytest.mark.skipif(bool(missing) and not REQUIRE_HUB, reason=reason)
        return pytest.mark.hub(skip(test))

    return mark


# --------------------------------------------------------------------------------------------- the cases

GOLDEN_DIR = Path(__file__).parent / "golden"
SGD_LR = 0.1

SPEC_BUILDERS: dict[str, Callable] = {
    # the chapter's blocks and models
    "Residual": specs.residual,
    "ResNeXtBlock": specs.resnext,
    "ResNet": specs.book_resnet,
    "ResNet18": lambda num_classes=10: specs.book_resnet(specs.RESNET18_ARCH, num_classes),
    # the family's blocks and models
    "BasicBlock": specs.basic,
    "Bottleneck": specs.bottleneck,
    "PreActBasic": lambda *args: specs.basic(*args, preact=True),
    "PreActBottleneck": lambda *args: specs.bottleneck(*args, preact=True),
    "FamilyResNet": specs.resnet_spec,  # any ModelSpec, built as rn.ResNet(spec=...)
    **{name: (lambda *args, name=name: specs.family_spec(name, *args)) for name in specs.FAMILY},
}


@dataclass(frozen=True)
class Case:
    """A block or model (class name and arguments), an input shape, and whether it ends in class scores."""

    name: str
    cls: str
    args: tuple
    input_shape: tuple[int, int, int, int]
    classifier: bool = False

    @property
    def spec(self):
        """The description, from the shared code alone (no framework)."""
        return SPEC_BUILDERS[self.cls](*self.args)

    def make(self, rn):
        """The native block or model of backend module ``rn``."""
        if self.cls == "FamilyResNet":
            return rn.ResNet(spec=self.spec)
        if self.cls == "ResNet":  # the case's args are book_resnet's (arch, num_classes); the class takes lr second
            arch, num_classes = self.args
            return rn.ResNet(arch, num_classes=num_classes)
        return getattr(rn, self.cls)(*self.args)

    def inputs(self) -> dict[str, np.ndarray]:
        """Input, output cotangent and labels, seeded by the case's name so every backend sees the same."""
        rng = np.random.default_rng(sum(map(ord, self.name)))
        x = rng.standard_normal(self.input_shape).astype(np.float32)
        return {"input": x, "labels": (np.arange(self.input_shape[0]) * 3 % 10).astype(np.int64)}


def case_ids(case: Case) -> str:
    """A case's test ID: its name."""
    return case.name


# The chapter's blocks, and a small ResNet made of them.
CHAPTER_BLOCK_CASES = [
    Case("residual", "Residual", (3,), (4, 3, 6, 6)),
    Case("residual_1x1_s2", "Residual", (6, True, 2), (4, 3, 6, 6)),
    Case("residual_1x1_s2_odd", "Residual", (5, True, 2), (3, 4, 7, 7)),
    *(Case(f"resnext_g{g}", "ResNeXtBlock", (32, g, 1), (2, 32, 6, 6)) for g in (1, 2, 8, 32)),
    *(Case(f"resnext_g{g}_1x1_s2", "ResNeXtBlock", (64, g, 0.5, True, 2), (2, 16, 7, 7)) for g in (1, 2, 8, 32)),
]
SMALL_RESNET = Case("small_resnet", "ResNet", (((1, 64), (1, 32)), 10), (4, 1, 24, 24), classifier=True)
CHAPTER_CASES = [*CHAPTER_BLOCK_CASES, SMALL_RESNET]

# The family's blocks (torchvision's convention and pre-activation), and two small models made of them.
FAMILY_BLOCK_CASES = [
    Case("basic", "BasicBlock", (3,), (4, 3, 6, 6)),
    Case("basic_1x1_s2", "BasicBlock", (6, True, 2), (4, 3, 7, 7)),
    Case("bottleneck", "Bottleneck", (4,), (2, 16, 5, 5)),
    Case("bottleneck_1x1_s2", "Bottleneck", (4, True, 2), (2, 8, 7, 7)),
    Case("bottleneck_g4_1x1_s2", "Bottleneck", (8, True, 2, 4, 16), (2, 16, 7, 7)),  # ResNeXt: 4 groups of 2
    Case("bottleneck_g4_1x1_s2_in_1x1", "Bottleneck", (8, True, 2, 4, 16, True), (2, 16, 7, 7)),  # paper's stride
    Case("preact_basic", "PreActBasic", (4,), (4, 4, 6, 6)),
    Case("preact_basic_1x1_s2", "PreActBasic", (6, True, 2), (4, 3, 7, 7)),
    Case("preact_bottleneck", "PreActBottleneck", (4,), (2, 16, 5, 5)),
    Case("preact_bottleneck_1x1_s2", "PreActBottleneck", (4, True, 2), (2, 8, 7, 7)),
]
SMALL_FAMILY_MODELS = [
    Case(
        "small_resnext",
        "FamilyResNet",
        ("bottleneck", (1, 2), (8, 16), 10, 3, 4, 16, False, 16),
        (4, 3, 24, 24),
        classifier=True,
    ),
    Case(
        "small_preact_resnet",
        "FamilyResNet",
        ("preact_bottleneck", (2, 1), (8, 16), 10, 3, 1, 64, True, 16),
        (4, 3, 24, 24),
        classifier=True,
    ),
]
FAMILY_CASES = [*FAMILY_BLOCK_CASES, *SMALL_FAMILY_MODELS]

#: Every case with a golden file under ``golden/``.
GOLDEN_CASES = [*CHAPTER_CASES, *FAMILY_CASES]

# Grouped convolutions at the group widths where backends switch how they compute them (one convolution per
# group, block-diagonal dense kernels for a few groups at once, the framework's own kernel): 64 channels in
# groups of 32 down to 2, a strided block, groups of 6 channels (MXNet's chunks of 16 or 32 channels cannot
# hold whole groups of 6) and 128 channels (MXNet's wider chunks). Checked against the reference computed fresh
# (no golden files).
GROUPED_PATH_CASES = [
    *(Case(f"resnext64_g{g}", "ResNeXtBlock", (64, g, 1), (2, 64, 6, 6)) for g in (2, 4, 8, 16, 32)),
    Case("resnext64_g16_1x1_s2", "ResNeXtBlock", (64, 16, 1, True, 2), (2, 32, 7, 7)),
    Case("resnext48_g8", "ResNeXtBlock", (48, 8, 1), (2, 48, 5, 5)),
    Case("resnext128_g32", "ResNeXtBlock", (128, 32, 1), (2, 128, 4, 4)),
]
# The chapter's ResNet-18, checked against the reference computed when the tests run (no golden file).
RESNET18 = Case("resnet18", "ResNet18", (), (4, 1, 64, 64), classifier=True)
# The multi-GPU section's ResNet-18 (the chapter's blocks, a 3x3/1 stem without max pooling), built by the family's
# builder with the book's 10 classes and 1 channel and checked the same way; odd sizes (15 -> 8 -> 4 -> 2) through
# its strided stages.
RESNET18_MULTIGPU = Case("resnet18_multigpu", "resnet18_multigpu", (10, 1), (3, 1, 15, 15), classifier=True)


# ------------------------------------------------------------------------ the reference's numbers for a case


def expected_values(case: Case) -> dict[str, np.ndarray]:
    """Everything the reference says a backend must reproduce for ``case``, in float64."""
    spec, inputs = case.spec, case.inputs()
    weights = reference_weights(spec, case.input_shape, seed=len(case.name))
    out = {"input": inputs["input"], "labels": inputs["labels"]}
    out.update({f"weights/{k}": v for k, v in weights.items()})
    out["inference"] = Reference(spec, weights).forward(inputs["input"])
    reference = Reference(spec, weights)
    output_grad = np.random.default_rng(7).standard_normal(out["inference"].shape).astype(np.float32)
    out["output_grad"] = output_grad
    out["training"], grads = reference.vjp(inputs["input"], output_grad)
    out.update({f"grad/{k}": v for k, v in grads.items() if k != "input"})
    out.update({f"after_training/{k}": v for k, v in reference.weights.items() if "running" in k})
    if case.classifier:
        stepped = Reference(spec, weights)
        out["sgd_loss"] = np.array([stepped.sgd_step(inputs["input"], inputs["labels"], SGD_LR)])
        out.update({f"after_sgd/{k}": v for k, v in stepped.weights.items()})
    return out


def golden(case: Case) -> dict[str, np.ndarray]:
    """The golden file's arrays for ``case`` (written by ``python tests/write_golden.py`` from the reference)."""
    return load_file(str(GOLDEN_DIR / f"{case.name}.safetensors"))


def section(arrays: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """The arrays under ``prefix/``, with the prefix removed."""
    return {k[len(prefix) + 1 :]: v for k, v in arrays.items() if k.startswith(prefix + "/")}


# ---------------------------------------------------------------------------- comparisons with the reference


def tolerance(case: Case) -> float:
    """The absolute tolerance on a case's outputs: float32 backends against the float64 reference reach 1e-5
    on single blocks and 1e-4 on models, whose errors add up through the layers."""
    return 1e-4 if case.classifier else 1e-5


def loaded(rn, case: Case, arrays: dict[str, np.ndarray]):
    """The case's native model with the weights in ``arrays`` (a golden file's, or ``expected_values``) assigned."""
    model = case.make(rn)
    rn.build(model, case.input_shape)
    rn.set_arrays(model, section(arrays, "weights"))
    return model


def assert_close(actual, expected, atol: float, what: str) -> None:
    """``actual`` has the shape of ``expected`` and is within ``atol`` of it everywhere; the message names ``what``
    and the largest error."""
    error = float(np.max(np.abs(np.asarray(actual, np.float64) - expected))) if np.size(expected) else 0.0
    assert np.shape(actual) == np.shape(expected), f"{what}: shape {np.shape(actual)} != {np.shape(expected)}"
    assert error <= atol, f"{what}: max abs error {error:.3g} > {atol:.3g}"


def assert_grads_close(grads: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    """The gradients of the same tensors as the reference's, each within 1e-4 of the largest gradient of that
    tensor plus 1e-5 of the largest of all (for the conv biases in front of BatchNorm, whose true gradient is 0)."""
    assert sorted(grads) == sorted(expected), "gradient names differ from the reference's"
    overall = max(float(np.abs(g).max()) for g in expected.values())
    for name, reference in expected.items():
        atol = 1e-4 * float(np.abs(reference).max()) + 1e-5 * overall
        assert_close(grads[name], reference, atol, f"gradient of {name}")
