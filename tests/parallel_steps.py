"""Ten SGD steps of a small ResNet in float64 through a backend's data-parallel hooks, in a fresh process
(frameworks fix their devices when they start); ``tests/test_parallel.py`` runs it:

    python tests/parallel_steps.py <backend> <devices> <sync_bn: 0 or 1> <out.npz>

Several processes (JAX's coordinator, TensorFlow's TF_CONFIG) come from the environment, as in a real run;
PyTorch's workers are started by the backend's ``launch``. Process 0 writes the losses and the final weights.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import numpy as np

from resnet.parallel import Plan, plan_from_environment
from resnet.reference import reference_weights
from resnet.registry import REGISTRY

ARCH = ((1, 64), (1, 32))
SHAPE = (8, 1, 16, 16)  # the global batch
STEPS = 10
LR = 0.1


def batches() -> list[tuple[np.ndarray, np.ndarray]]:
    """The global batches, the same in every process."""
    rng = np.random.default_rng(0)
    return [(rng.standard_normal(SHAPE), rng.integers(0, 10, SHAPE[0])) for _ in range(STEPS)]


def train(backend: str, devices: int, sync_bn: bool, dtype: str = "float64") -> dict[str, Any]:
    """The steps in this process: one replica's work, or all of them."""
    rn = importlib.import_module(REGISTRY[backend].module)
    plan = rn.init_distributed(plan_from_environment(backend, devices, sync_bn))
    model = rn.ResNet(ARCH, num_classes=10, dtype=dtype)
    rn.build(model, SHAPE)
    rn.set_arrays(model, reference_weights(model.spec, SHAPE))
    if plan.replicas > 1:
        trained = rn.replicate(model, plan)
        step = rn.make_parallel_train_step(trained, plan, LR)
    else:
        trained, step = model, rn.make_train_step(model, LR)
    losses = [step(x, labels) for x, labels in batches()]
    return {
        "losses": np.asarray(losses),
        "process": np.asarray(plan.process_index),
        **{f"weights/{name}": value for name, value in rn.get_arrays(trained).items()},
    }


def main(backend: str, devices: int, sync_bn: bool, out: str, dtype: str = "float64") -> None:
    rn = importlib.import_module(REGISTRY[backend].module)
    results = rn.launch(Plan(devices=devices, sync_bn=sync_bn), train, (backend, devices, sync_bn, dtype))
    result = results[0] if results is not None else train(backend, devices, sync_bn, dtype)
    if int(result["process"]) == 0:
        np.savez(out, **result)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4], *sys.argv[5:])
