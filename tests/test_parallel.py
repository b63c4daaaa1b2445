"""Data-parallel training: the plan and the batch split (framework-free), then every backend on 2 replicas of
this CPU through its framework's own engine, against its one-device step and the NumPy reference.

The runs are fresh processes (``parallel_steps.py``, ``resnet train``): frameworks fix their devices when they
start. They talk only to 127.0.0.1, take a bounded number of steps and end by themselves (with a timeout).
"""

from __future__ import annotations

import functools
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from resnet import specs
from resnet.data import Batches, load_dataset
from resnet.models import build_model
from resnet.parallel import Plan, check_global_batch, plan_from_environment
from resnet.reference import Reference, reference_weights
from resnet.training import evaluate
from resnet.weights import load_weights, read_weights

STEPS_SCRIPT = Path(__file__).with_name("parallel_steps.py")
TIMEOUT = 600
sys.path.insert(0, str(STEPS_SCRIPT.parent))
import parallel_steps  # noqa: E402  (the steps' settings: ARCH, SHAPE, LR, batches)

# --- the plan, framework-free ---------------------------------------------------------------------------


@pytest.mark.parametrize("n, replicas", [(8, 2), (9, 2), (7, 4), (128, 3), (5, 5)])
def test_replica_slices_cover_the_batch_once(n, replicas):
    plan = Plan(devices=replicas)
    slices = plan.replica_slices(n)
    rows = np.concatenate([np.arange(n)[s] for s in slices])
    assert rows.tolist() == list(range(n))
    sizes = [s.stop - s.start for s in slices]
    assert max(sizes) - min(sizes) <= 1
    assert np.isclose(np.mean(plan.loss_weights(n)), 1.0)  # the averaged weighted losses are the batch's mean


def test_process_slices_are_their_replicas():
    plans = [Plan(devices=2, processes=3, process_index=i) for i in range(3)]
    assert [p.process_slice(12) for p in plans] == [slice(0, 4), slice(4, 8), slice(8, 12)]
    assert [list(p.local_replicas) for p in plans] == [[0, 1], [2, 3], [4, 5]]
    assert [p.is_main for p in plans] == [True, False, False]


def test_bad_plans_are_refused_clearly():
    with pytest.raises(ValueError, match="--batch-size 130 is the global batch, split over 4 replicas.*use 128 or 132"):
        check_global_batch(130, Plan(devices=2, processes=2, coordinator="127.0.0.1:1"))
    with pytest.raises(ValueError, match="process id 2 does not exist among 2 processes"):
        Plan(processes=2, process_index=2)
    with pytest.raises(ValueError, match="devices per process"):
        Plan(devices=0)
    with pytest.raises(ValueError, match="host:port"):
        Plan(processes=2, coordinator="localhost")
    with pytest.raises(ValueError, match="cannot be shared by 4 replicas"):
        Plan(devices=4).replica_slices(3)


def test_plans_from_the_launchers_environment():
    torchrun = {
        "WORLD_SIZE": "4",
        "RANK": "3",
        "LOCAL_WORLD_SIZE": "2",
        "MASTER_ADDR": "10.0.0.1",
        "MASTER_PORT": "29400",
    }
    assert plan_from_environment("torch", env=torchrun) == Plan(1, 4, 3, False, "10.0.0.1:29400")
    with pytest.raises(ValueError, match="--nproc_per_node, not --devices"):
        plan_from_environment("torch", devices=8, env=torchrun)
    jax_env = {"JAX_COORDINATOR_ADDRESS": "127.0.0.1:12355", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}
    assert plan_from_environment("jax", devices=2, sync_bn=True, env=jax_env) == Plan(2, 2, 1, True, "127.0.0.1:12355")
    with pytest.raises(ValueError, match="need a coordinator"):
        plan_from_environment("jax", num_processes=2, process_id=0, env={})
    with pytest.raises(ValueError, match="give each its --process-id"):
        plan_from_environment("jax", coordinator="127.0.0.1:1", num_processes=2, env={})
    tf_config = {
        "TF_CONFIG": json.dumps(
            {"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "worker", "index": 1}}
        )
    }
    assert plan_from_environment("tensorflow", env=tf_config) == Plan(1, 2, 1)
    with pytest.raises(ValueError, match="TF_CONFIG must be JSON"):
        plan_from_environment("tensorflow", env={"TF_CONFIG": "{not json"})
    assert plan_from_environment("mxnet", devices=2, env={}) == Plan(2)


def test_reference_replica_step_with_one_replica_is_the_plain_step():
    spec = specs.book_resnet(parallel_steps.ARCH, 10)
    weights = reference_weights(spec, parallel_steps.SHAPE)
    ((x, labels),) = parallel_steps.batches()[:1]
    plain, split = Reference(spec, weights), Reference(spec, weights)
    assert plain.sgd_step(x, labels, 0.1) == split.replica_sgd_step(x, labels, 0.1, [slice(0, len(x))])
    assert all(np.array_equal(plain.weights[k], split.weights[k]) for k in plain.weights)


# --- every backend on 2 replicas ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def quiet_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RESNET_BACKEND", "TF_CONFIG", "WORLD_SIZE")}
    return {**env, "TF_CPP_MIN_LOG_LEVEL": "3", **extra}


#: Against the NumPy reference, float64, after the 10 steps: every backend within 1e-8 relative. MXNet's worst,
#: measured: 1.3e-9 on the losses and 3.4e-9 on the running statistics (its learning rate is held in float32;
#: its BatchNorm momentum, once float32 too and then 1.4e-7 off, is exact now), so it needs no bound of its own.
REFERENCE_RTOL = 1e-8


@functools.cache
def steps(backend: str, devices: int, sync_bn: bool, dtype: str = "float64", **env: str) -> dict[str, np.ndarray]:
    """The losses and final weights of ``parallel_steps.py`` on this host (one process or PyTorch's workers)."""
    with tempfile.TemporaryDirectory(prefix="parallel-") as folder:
        out = Path(folder) / "steps.npz"
        done = subprocess.run(
            [sys.executable, str(STEPS_SCRIPT), backend, str(devices), str(int(sync_bn)), str(out), dtype],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            cwd=folder,
            env=quiet_env(**env),
        )
        assert done.returncode == 0, (
            f"{backend} on {devices} devices failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
        )
        return dict(np.load(out))


def reference_steps(per_replica: int) -> dict[str, np.ndarray]:
    """The NumPy float64 reference of the same steps: BatchNorm over the global batch (``per_replica`` 1) or
    per replica's rows."""
    spec = specs.book_resnet(parallel_steps.ARCH, 10)
    reference = Reference(spec, reference_weights(spec, parallel_steps.SHAPE))
    slices = Plan(devices=per_replica).replica_slices(parallel_steps.SHAPE[0])
    losses = [reference.replica_sgd_step(x, y, parallel_steps.LR, slices) for x, y in parallel_steps.batches()]
    return {"losses": np.asarray(losses), **{f"weights/{k}": v for k, v in reference.weights.items()}}


def assert_same_run(actual: dict, expected: dict, rtol: float, what: str) -> None:
    np.testing.assert_allclose(actual["losses"], expected["losses"], rtol=rtol, err_msg=f"{what}: losses")
    names = sorted(k for k in expected if k.startswith("weights/"))
    assert sorted(k for k in actual if k.startswith("weights/")) == names
    for name in names:
        scale = max(1.0, float(np.abs(expected[name]).max()))
        error = float(np.abs(actual[name] - expected[name]).max()) / scale
        assert error <= rtol, f"{what}: {name} differs by {error:.2e} (relative)"


def test_two_replicas_with_sync_bn_follow_one_device(backend_name):
    """float64: 2 replicas on a global batch of 8 with synchronised BatchNorm take the one-device steps on the
    whole batch, for 10 steps, and both follow the reference."""
    if backend_name == "mxnet":
        # MXNet 1.9.1's SyncBatchNorm computes in float32 only, and on CPU contexts needs MXNET_CPU_TEMP_COPY
        one, two = steps("mxnet", 1, False, "float32"), steps("mxnet", 2, True, "float32", MXNET_CPU_TEMP_COPY="256")
        assert_same_run(two, one, 1e-6, "2 replicas with --sync-bn against one device, float32")
        assert_same_run(one, reference_steps(1), 2e-6, "one device against the reference, float32")
        return
    one, two = steps(backend_name, 1, False), steps(backend_name, 2, True)
    assert_same_run(two, one, 1e-9, "2 replicas with --sync-bn against one device")
    assert_same_run(one, reference_steps(1), REFERENCE_RTOL, "one device against the reference")


def test_two_replicas_with_per_replica_bn_follow_the_reference_per_half(backend_name):
    """Per-replica BatchNorm: each half batch normalized by its own statistics, as the reference does it."""
    two = steps(backend_name, 2, False)
    assert_same_run(
        two,
        reference_steps(2),
        REFERENCE_RTOL,
        "2 replicas, BatchNorm per replica, against the reference",
    )
    assert not np.allclose(two["losses"][1:], steps(backend_name, 1, False)["losses"][1:], rtol=1e-6)


#: The image side of the short data-parallel run below.
RUN_RESIZE = 8


#: The digits a short data-parallel run trains and validates on: the first of each split.
RUN_EXAMPLES = {"train": 384, "val": 64}


#: A short data-parallel run: 2 epochs of 3 steps (RUN_EXAMPLES' digits in global batches of 128, 64 per replica)
#: at RUN_RESIZE x RUN_RESIZE, on 2 replicas of this CPU.
def train_command(out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "resnet",
        "train",
        "--dataset",
        "digits",
        "--resize",
        str(RUN_RESIZE),
        "--max-train-examples",
        str(RUN_EXAMPLES["train"]),
        "--max-val-examples",
        str(RUN_EXAMPLES["val"]),
        "--batch-size",
        "128",
        "--lr",
        "0.05",
        "--devices",
        "2",
        "--epochs",
        "2",
        "--no-progress",
        "--out",
        str(out),
        *extra,
    ]


@pytest.mark.slow  # several processes; run in CI too
def test_killed_data_parallel_run_resumes_to_the_same_result(rn, backend_name, tmp_path):
    """`resnet train --devices 2`, killed (SIGKILL, every process of it) at the second step of its second epoch,
    resumes to the uninterrupted run's weights; the checkpoint then loads into a one-device model with the same
    validation accuracy."""
    env = quiet_env(RESNET_BACKEND=backend_name)
    whole = tmp_path / "whole"
    done = subprocess.run(train_command(whole), capture_output=True, text=True, timeout=TIMEOUT, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-6000:]
    cut = tmp_path / "cut"
    # RESNET_FAULT (resnet/faults.py) kills the run at its fifth step; in torch each worker process kills
    # itself there, and the launcher then ends. Our own process group is killed only if it outlives the timeout.
    run = subprocess.Popen(
        train_command(cut),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env={**env, "RESNET_FAULT": "step:5"},
        start_new_session=True,
    )
    try:
        _, err = run.communicate(timeout=TIMEOUT)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)  # our own run and the workers it started, nothing else
            run.wait(timeout=60)
    assert run.returncode != 0, "the run was not killed at its fifth step"
    assert len((cut / "metrics.csv").read_text().splitlines()) == 2, err[-6000:]  # the header and epoch 1
    resumed = subprocess.run(
        train_command(cut, "--resume"),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=tmp_path,
        env=env,
    )
    assert resumed.returncode == 0, resumed.stderr[-6000:]
    expected, _ = read_weights(whole / "last.safetensors")
    actual, header = read_weights(cut / "last.safetensors")
    assert header["epoch"] == "2"
    for name, value in expected.items():
        np.testing.assert_allclose(actual[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
    metrics = [line.split(",") for line in (whole / "metrics.csv").read_text().splitlines()]
    accuracy = float(metrics[-1][metrics[0].index("val_acc")])
    # The one-device model in this process (its framework is already imported here): the same accuracy.
    data = load_dataset("digits").first(RUN_EXAMPLES["train"], RUN_EXAMPLES["val"])
    model = build_model("resnet18", rn, data.num_classes, 1)
    load_weights(model, whole / "last.safetensors")
    _, one_device = evaluate(rn.make_predict(model), Batches(data.val_images, data.val_labels, 64, RUN_RESIZE))
    assert abs(one_device - accuracy) <= 1e-6


def multi_process_environments(backend: str, port: int) -> list[dict[str, str]]:
    """What each framework's launcher sets for 2 processes of one device each, meeting on 127.0.0.1: torchrun
    on two hosts of one process, JAX's coordinator variables, TensorFlow's TF_CONFIG, MXNet's DMLC variables
    (its 'dist_sync' kvstore also needs a scheduler and a server: ``mxnet_parameter_server``)."""
    if backend == "torch":
        return [
            {
                "WORLD_SIZE": "2",
                "RANK": str(i),
                "LOCAL_RANK": "0",
                "LOCAL_WORLD_SIZE": "1",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
            }
            for i in range(2)
        ]
    if backend == "jax":
        return [
            {"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": str(i)}
            for i in range(2)
        ]
    if backend == "tensorflow":
        workers = [f"127.0.0.1:{port}", f"127.0.0.1:{free_port()}"]
        return [
            {"TF_CONFIG": json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}})}
            for i in range(2)
        ]
    return [{**MXNET_DIST(port), "DMLC_ROLE": "worker"} for _ in range(2)]


def MXNET_DIST(port: int) -> dict[str, str]:  # noqa: N802 (a table, as the others)
    return {
        "DMLC_PS_ROOT_URI": "127.0.0.1",
        "DMLC_PS_ROOT_PORT": str(port),
        "DMLC_NUM_SERVER": "1",
        "DMLC_NUM_WORKER": "2",
    }


def two_processes(backend: str, cwd: Path, command: list[str]) -> list[tuple[int, str, str]]:
    """Run ``command`` as 2 processes of ``backend``, started as its launcher starts them on 127.0.0.1
    (MXNet's parameter server beside them); (return code, stdout, stderr) of each, once both have ended."""
    port = free_port()
    helpers: list[subprocess.Popen] = []
    if backend == "mxnet":  # the parameter server's scheduler and server, as MXNet's launcher starts them
        for role in ("scheduler", "server"):
            helpers.append(
                subprocess.Popen(
                    [sys.executable, "-c", "import mxnet"],
                    cwd=cwd,
                    env=quiet_env(**MXNET_DIST(port), DMLC_ROLE=role),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
    workers = [
        subprocess.Popen(
            command, cwd=cwd, env=quiet_env(**extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for extra in multi_process_environments(backend, port)
    ]
    try:
        outputs = [worker.communicate(timeout=TIMEOUT) for worker in workers]
    finally:
        for process in (*workers, *helpers):
            if process.poll() is None:
                process.kill()  # only what this test started
            process.wait(timeout=60)
    return [(worker.returncode, stdout, stderr) for worker, (stdout, stderr) in zip(workers, outputs)]


@pytest.mark.slow  # several processes; run in CI too
def test_two_processes_follow_the_reference_per_half(backend_name, tmp_path):
    """Two processes of one replica each, started as each framework's launcher starts them, on 127.0.0.1."""
    out = tmp_path / "steps.npz"
    for code, stdout, stderr in two_processes(
        backend_name, tmp_path, [sys.executable, str(STEPS_SCRIPT), backend_name, "1", "0", str(out)]
    ):
        assert code == 0, f"a {backend_name} process failed:\n{stdout[-3000:]}\n{stderr[-6000:]}"
    # MXNet's 'dist_sync' parameter server: here every run gives 1.2e-9 on the losses and 1.4e-7 on the
    # statistics, but one CI run gave 4.7e-8 on the first loss and 2.0e-7 on b1.bn.running_var, as if a weight had
    # passed through float32 once (not understood; see the README's MXNet limits). 1e-6 still catches a wrong
    # step, which is off by far more.
    rtol = 1e-6 if backend_name == "mxnet" else REFERENCE_RTOL
    assert_same_run(dict(np.load(out)), reference_steps(2), rtol, "2 processes against the reference per half")


AGREE = """
import importlib, os, sys
from resnet.parallel import plan_from_environment
rn = importlib.import_module("resnet.backends." + sys.argv[1])
plan = rn.init_distributed(plan_from_environment(sys.argv[1]))
lr = "0.05" if plan.process_index == 0 else "0.1"  # a setting the two processes do not share
try:
    rn.agree(plan, '{"lr": ' + lr + ', "epochs": 2}')
except ValueError as error:
    print("refused:", error)
else:
    print("agreed")
"""


@pytest.mark.slow  # several processes; run in CI too
def test_processes_with_different_settings_are_refused(backend_name, tmp_path):
    """Mismatched settings between processes stop each process with an error naming the difference."""
    for code, stdout, stderr in two_processes(backend_name, tmp_path, [sys.executable, "-c", AGREE, backend_name]):
        assert code == 0, stderr[-6000:]
        assert "refused:" in stdout and "process 1" in stdout, stdout[-3000:]  # the process that differs


def test_more_devices_than_exist_is_a_clear_error(backend_name, tmp_path):
    done = subprocess.run(
        train_command(tmp_path / "run", "--epochs", "1", "--devices", "64"),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=tmp_path,
        env=quiet_env(RESNET_BACKEND=backend_name),
    )
    assert done.returncode == 2, done.stderr[-6000:]
    message = done.stderr.strip().splitlines()[-1]
    assert message.startswith("resnet: error:") and "64" in message and "Traceback" not in done.stderr, done.stderr
