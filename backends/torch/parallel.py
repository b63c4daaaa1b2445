"""The contract's data-parallel hooks for PyTorch models: ``torch.nn.parallel.DistributedDataParallel``, one
process per device, as the book's multi-GPU chapter and PyTorch's own documentation train.

PyTorch's engine gives each device a process of its own: ``torchrun`` (or, for ``resnet train --devices N`` on
one host, ``launch`` here through the same elastic launcher) starts them and sets ``WORLD_SIZE``, ``RANK``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; ``init_distributed`` joins their process group (gloo on a
CPU, nccl for CUDA tensors); DDP all-reduces the gradients during the backward pass and averages them. Each
process takes its replica's rows of the global batch and weights its loss by its share
(``resnet.parallel.Plan.loss_weights``), so the averaged gradient is the global batch's. BatchNorm keeps each
replica's statistics (the running averages are then averaged over the processes after every step, in the
same all-reduce that averages the loss) or, with ``plan.sync_bn``, the global batch's
(``layers.SyncBatchNorm2d``: torch's SyncBatchNorm on GPUs).
"""

from __future__ import annotations

import atexit
import copy
import json
import os
import socket
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from resnet.backends.torch.hooks import build, dtype_of, is_built, weights_device
from resnet.backends.torch.layers import statistics_at_the_end, synchronise_batch_norm
from resnet.backends.torch.train import NAME, _fast_layout
from torch import nn
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.launcher.api import LaunchConfig, elastic_launch
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel

from resnet.contract import PARALLEL_HOOKS, check_mixed_precision, hook, learning_rate_of
from resnet.parallel import Plan

__all__ = list(PARALLEL_HOOKS)

#: How long a process waits for the others: to meet, and in each collective operation.
TIMEOUT = timedelta(minutes=10)
_GROUP_OF_ONE = False  # whether the process group is the one-process group a 1-replica step made


def _local_devices() -> tuple[int, str]:
    """How many devices this host has for worker processes, and what they are."""
    if torch.cuda.is_available():
        return torch.cuda.device_count(), "GPU"
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1, "CPU core"


def _check_devices(wanted: int, flag: str) -> None:
    count, kind = _local_devices()
    if wanted > count:
        raise ValueError(
            f"{wanted} devices asked for on this host, but it has {count} {kind}{'s' if count != 1 else ''} (each "
            f"torch worker process drives one): use {flag} {count} or fewer here, and more hosts with torchrun "
            '(--nnodes, --rdzv-endpoint; README: "Training on several devices or hosts")'
        )


def _engine_backend() -> str:
    """gloo on a CPU; on a GPU host nccl for CUDA tensors, gloo for CPU ones (a model kept on the CPU, agree)."""
    return "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _check_one_device_per_process(plan: Plan) -> None:
    if plan.devices > 1:
        raise ValueError(
            f"a torch process drives one device, but the plan has {plan.devices} per process: start one process "
            f"per device, with launch() (which resnet train --devices {plan.devices} uses) or torchrun "
            f"--nproc_per_node {plan.devices}"
        )


def _check_group(plan: Plan) -> None:
    _check_one_device_per_process(plan)
    if not dist.is_initialized():
        raise ValueError(f"{plan.processes} processes: call init_distributed(plan) first, before building the model")
    if (dist.get_world_size(), dist.get_rank()) != (plan.processes, plan.process_index):
        raise ValueError(
            f"the plan is process {plan.process_index} of {plan.processes}, but this process's group is process "
            f"{dist.get_rank()} of {dist.get_world_size()}"
        )


@hook
def init_distributed(plan: Plan) -> Plan:
    """``torch.distributed.init_process_group`` with ``env://`` under torchrun (the address in ``MASTER_ADDR``
    and ``MASTER_PORT``), else ``tcp://`` at ``plan.coordinator``; the process's GPU is ``LOCAL_RANK``. On a
    CPU, without ``OMP_NUM_THREADS``, the host's cores are shared among its processes."""
    global _GROUP_OF_ONE
    _check_one_device_per_process(plan)
    if plan.replicas == 1:
        return plan
    if dist.is_initialized() and _GROUP_OF_ONE:
        dist.destroy_process_group()
        _GROUP_OF_ONE = False
    if dist.is_initialized():
        _check_group(plan)
        return plan
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        _check_devices(max(local_rank + 1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))), "torchrun --nproc_per_node")
        torch.cuda.set_device(local_rank)
    elif "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, _local_devices()[0] // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    if os.environ.get("MASTER_ADDR") and os.environ.get("MASTER_PORT"):
        method = "env://"  # torchrun's store (its agent may host it already)
    elif plan.coordinator is not None:
        method = f"tcp://{plan.coordinator}"
    else:
        raise ValueError(
            f"{plan.processes} processes need a place to meet: start them with torchrun (which sets MASTER_ADDR "
            "and MASTER_PORT), or give the plan a coordinator, Plan(..., coordinator='HOST:PORT') with process "
            "0's address"
        )
    dist.init_process_group(
        _engine_backend(), init_method=method, rank=plan.process_index, world_size=plan.processes, timeout=TIMEOUT
    )
    # Left to the interpreter's exit, gloo's threads can outlive the group and abort the process ("terminate
    # called without an active exception", status -6) after an error such as agree's had been reported.
    atexit.register(_leave)
    return plan


def _leave() -> None:
    """Leave the process group at exit, if still in one."""
    if dist.is_initialized():
        dist.destroy_process_group()


@hook
def launch(plan: Plan, target: Callable[..., Any], args: tuple) -> dict[int, Any] | None:
    """``torch.distributed.launcher.api.elastic_launch``, torchrun's engine: ``plan.devices`` workers with the
    c10d rendezvous on 127.0.0.1, no restarts. A process already under torchrun (``WORLD_SIZE`` set) is a
    worker."""
    if plan.devices == 1 or os.environ.get("WORLD_SIZE"):
        return None
    if plan.processes > 1:
        raise ValueError(
            f'{plan.processes} hosts: start the workers of each with torchrun (README: "Training on '
            'several devices or hosts"); launch() starts the workers of one host'
        )
    _check_devices(plan.devices, "--devices")
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=plan.devices,
        run_id=f"resnet-{os.getpid()}",
        rdzv_backend="c10d",
        rdzv_endpoint=f"127.0.0.1:{_free_port()}",
        rdzv_configs={"join_timeout": 120},
        local_addr="127.0.0.1",
        max_restarts=0,
    )
    try:
        results = elastic_launch(config, target)(*args)
    except ChildFailedError as failure:
        rank, first = failure.get_first_failure()
        message = first.message.get("message") if isinstance(first.message, dict) else first.message  # its error
        raise RuntimeError(
            f"worker process {rank} of {plan.devices} failed (exit code {first.exitcode}): {message} (its traceback "
            "is above)"
        ) from None
    return dict(sorted(results.items()))  # one host: the local ranks are the process indices


@hook
def replicate(model: nn.Module, plan: Plan) -> nn.Module:
    """The model itself, on this process's device (its GPU, when the model is on a GPU), with process 0's
    weights and running averages; with ``plan.sync_bn`` a copy whose BatchNorm layers are ``SyncBatchNorm2d``.
    DistributedDataParallel wraps it inside the train step, so every hook works on what this returns."""
    if not is_built(model):
        raise ValueError(
            "build the model before replicating it (resnet.build(model, input_shape)): "
            "DistributedDataParallel needs its weights"
        )
    _check_one_device_per_process(plan)
    if weights_device(model).type == "cuda":
        model.to(torch.device("cuda", torch.cuda.current_device()))
    if plan.sync_bn:
        model = synchronise_batch_norm(copy.deepcopy(model))
    if plan.processes > 1:
        _check_group(plan)
        with torch.no_grad():
            for tensor in (*model.parameters(), *model.buffers()):
                dist.broadcast(tensor, 0)
    return model


@hook
def make_parallel_train_step(
    model: nn.Module, plan: Plan, lr: float | None = None, mixed_precision: bool = False
) -> Callable[..., float | Callable[[], float]]:
    """``make_train_step``'s eager step with the model in ``DistributedDataParallel`` (gradients all-reduced in
    buckets during the backward pass, ``forward_sync_buffers=False``); after ``optimizer.step()`` one all-reduce
    averages the BatchNorm running averages and the loss over the processes. One replica gets a process group of
    its own (in memory), so that its step too goes through DDP."""
    global _GROUP_OF_ONE
    dtype = check_mixed_precision(NAME, dtype_of(model), mixed_precision)
    lr = learning_rate_of(model, lr)
    _check_one_device_per_process(plan)
    if plan.replicas == 1 and not dist.is_initialized():
        dist.init_process_group(_engine_backend(), store=dist.HashStore(), rank=0, world_size=1, timeout=TIMEOUT)
        _GROUP_OF_ONE = True
    _check_group(plan)
    replica = plan.local_replicas[0]
    parallel, optimizer, native_batch, statistics = None, None, None, []

    def train_step(x: np.ndarray, labels: np.ndarray, wait: bool = True) -> float | Callable[[], float]:
        nonlocal parallel, optimizer, native_batch, statistics
        if parallel is None:  # after the first batch's shape has built any lazy layer
            build(model, x.shape)
            native_batch = _fast_layout(model)
            statistics = [b for name, b in model.named_buffers() if name.endswith(("running_mean", "running_var"))]
            device = weights_device(model)
            parallel = DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None, forward_sync_buffers=False
            )
            optimizer = torch.optim.SGD(model.parameters(), lr=lr)
        rows, weight = plan.replica_slices(len(x))[replica], plan.loss_weights(len(x))[replica]
        device = weights_device(model)
        model.train()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, torch.bfloat16, enabled=mixed_precision), statistics_at_the_end():
            logits = parallel(native_batch(np.asarray(x)[rows], dtype))
        targets = torch.from_numpy(np.asarray(labels, np.int64)[rows]).to(device)
        loss = F.cross_entropy(logits.to(getattr(torch, dtype)), targets) * weight
        loss.backward()  # DDP averages the replicas' gradients
        optimizer.step()
        loss = loss.detach()
        if plan.replicas > 1:  # the mean of the replicas' running averages, and the global batch's loss
            with torch.no_grad():
                shared = torch.cat([*(s.reshape(-1) for s in statistics), loss.reshape(1)]) / plan.replicas
                dist.all_reduce(shared)
                torch._foreach_copy_(statistics, list(shared[:-1].split([s.numel() for s in statistics])))
                loss = shared[-1]
        return float(loss) if wait else lambda: float(loss)

    return train_step


@hook
def agree(plan: Plan, fingerprint: str) -> None:
    """``torch.distributed.all_gather_object`` of the fingerprints; the error names the settings that differ
    when they are JSON objects."""
    if plan.processes == 1:
        return
    _check_group(plan)
    fingerprints: list[Any] = [None] * plan.processes
    dist.all_gather_object(fingerprints, fingerprint)
    differing = [rank for rank, other in enumerate(fingerprints) if other != fingerprints[0]]
    if differing:
        names = ", ".join(map(str, differing))
        raise ValueError(
            f"the processes were started with different settings: process{'es' if len(differing) > 1 else ''} "
            f"{names} differ{'s' if len(differing) == 1 else ''} from process 0 "
            f"({_difference(fingerprints[0], fingerprints[differing[0]], differing[0])}); start every process with "
            "the same command"
        )


def _difference(first: str, other: str, rank: int) -> str:
    """What differs between process 0's fingerprint and process ``rank``'s, briefly."""
    try:
        a, b = json.loads(first), json.loads(other)
    except ValueError:
        a = b = None
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
        return "; ".join(f"{k}: {a.get(k)!r} in process 0, {b.get(k)!r} in process {rank}" for k in keys)
    return f"{first[:200]!r} in process 0, {other[:200]!r} in process {rank}"
