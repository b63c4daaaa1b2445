"""Data-parallel training for MXNet Gluon models through Gluon's own engine: several contexts in one process
(``mx.gpu(i)`` on GPUs, ``mx.cpu(i)`` on a CPU), each replica's rows of the global batch loaded onto its own
context as ``gluon.utils.split_and_load`` does (contiguous, in ``Plan.replica_slices``'s sizes), and
``gluon.Trainer`` summing the replicas' gradients through a kvstore: 'device' on GPUs, 'local' on a CPU, and
'dist_sync' across processes (MXNet's parameter server: a scheduler, servers and the workers, which find each
other through the ``DMLC_*`` variables that MXNet's launcher, ``mxnet/tools/launch.py``, sets; its tracker
fails on Python 3.9 and later, where the variables are set by hand). It is the book's multi-GPU Gluon code.

BatchNorm is Gluon's ``nn.BatchNorm`` per context by default and ``contrib.nn.SyncBatchNorm`` with
``plan.sync_bn``, which synchronises the contexts of one process, in float32 only (MXNet 1.9.1's kernel), and
on CPU contexts only with enough temporary workspaces (``MXNET_CPU_TEMP_COPY``). The running averages, which
each context keeps for itself, are averaged over the replicas through the same kvstore after every step, as
are the losses."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon
from mxnet.gluon import nn
from resnet.backends.mxnet.hooks import dtype_of, initialize, to_native
from resnet.backends.mxnet.layers import numpy_semantics, semantics_of, synchronised_batch_norm
from resnet.backends.mxnet.models import ResNet, make_block
from resnet.backends.mxnet.train import _hybridize, _scalar

from resnet.contract import PARALLEL_HOOKS, check_mixed_precision, declared, hook, learning_rate_of
from resnet.parallel import Plan

__all__ = list(PARALLEL_HOOKS)

NAME = declared(__name__).name
#: How long a worker waits for the parameter server's scheduler to answer at DMLC_PS_ROOT_URI:PORT.
SCHEDULER_WAIT_S = 120.0
#: This package's own kvstore keys (the weights' broadcast, the BatchNorm statistics, the losses, ``agree``),
#: in the order every process asks for them; far above the Trainer's, which are its parameters' indices.
_KEYS = itertools.count(1_000_000)
_DIST: dict[str, Any] = {}  # the 'dist_sync' kvstore once this process has joined, and its Trainer


def _contexts(devices: int) -> list[mx.Context]:
    """The plan's local devices: GPUs when MXNet sees some, else contexts of the CPU (each with its own engine
    thread, so no more than the CPU has cores); ValueError when there are fewer."""
    gpus = mx.context.num_gpus()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    have = gpus or cores
    if devices > have:
        where = (
            f"{gpus} GPU{'s' if gpus != 1 else ''}"
            if gpus
            else (f"no GPU and {have} CPU cores, and each CPU context (mx.cpu(i)) gets an engine thread of its own")
        )
        raise ValueError(
            f"--devices {devices}: MXNet sees {where}, so at most {have} replicas in this process; use --devices "
            f"{have} or fewer, a machine with more GPUs (MXNet's CUDA build, mxnet-cuXXX), or several processes "
            "(MXNet's parameter server, the 'dist_sync' kvstore: README)"
        )
    return [mx.gpu(i) for i in range(devices)] if gpus else [mx.cpu(i) for i in range(devices)]


def _wait_for_scheduler(env: dict[str, str]) -> None:
    """A bounded wait for the scheduler that ``DMLC_PS_ROOT_URI``/``PORT`` names (MXNet itself waits forever)."""
    missing = [name for name in ("DMLC_PS_ROOT_URI", "DMLC_PS_ROOT_PORT", "DMLC_NUM_SERVER") if not env.get(name)]
    if missing:
        raise ValueError(
            f"this MXNet worker (DMLC_ROLE=worker) has no parameter server to meet: {', '.join(missing)} unset. "
            "Set them as MXNet's launcher (python -m mxnet.tools.launch -n WORKERS -s SERVERS ...) does: "
            "DMLC_PS_ROOT_URI and DMLC_PS_ROOT_PORT, the scheduler's address, and DMLC_NUM_SERVER"
        )
    address = (env["DMLC_PS_ROOT_URI"], int(env["DMLC_PS_ROOT_PORT"]))
    deadline = time.monotonic() + SCHEDULER_WAIT_S
    while True:
        try:
            socket.create_connection(address, timeout=2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise ValueError(
                    f"no MXNet scheduler answered at {address[0]}:{address[1]} (DMLC_PS_ROOT_URI:DMLC_PS_ROOT_PORT) "
                    f"within {SCHEDULER_WAIT_S:.0f} s: start it there (DMLC_ROLE=scheduler python -c 'import mxnet', "
                    "with the same DMLC_* variables) and the servers (DMLC_ROLE=server)"
                ) from None
            time.sleep(0.5)


@hook
def init_distributed(plan: Plan) -> Plan:
    """Several processes are the workers of MXNet's parameter server (``DMLC_ROLE=worker``): this creates the
    'dist_sync' kvstore, which joins the scheduler and the servers, and returns the plan with its rank as the
    process index.
    On a CPU the local devices are CPU contexts, at most one per core."""
    _contexts(plan.devices)
    env = dict(os.environ)
    worker = env.get("DMLC_ROLE") == "worker"
    if plan.processes > 1 and not worker:
        raise ValueError(
            f"{plan.processes} MXNet processes are the workers of its parameter server, started with DMLC_ROLE=worker "
            "and the scheduler's address (DMLC_PS_ROOT_URI, DMLC_PS_ROOT_PORT) by MXNet's launcher (python -m "
            "mxnet.tools.launch, Python 3.8 or older) or by hand (README); this process has no DMLC_ROLE"
        )
    if plan.sync_bn and plan.processes > 1:
        raise ValueError(
            "--sync-bn: Gluon's SyncBatchNorm synchronises the devices of one process, not MXNet's workers; train "
            "several processes with BatchNorm per replica (no --sync-bn), or one process over several devices"
        )
    if not worker:
        return plan
    if "kvstore" not in _DIST:
        _wait_for_scheduler(env)
        _DIST["kvstore"] = mx.kv.create("dist_sync")
    kvstore = _DIST["kvstore"]
    if kvstore.num_workers != plan.processes:
        raise ValueError(f"the plan has {plan.processes} processes but MXNet's kvstore {kvstore.num_workers} workers")
    return dataclasses.replace(plan, process_index=kvstore.rank)


def _kvstore(plan: Plan) -> mx.kv.KVStore | None:
    """The kvstore that sums over the plan's replicas: the processes' 'dist_sync' one, else a new local one
    ('device' reduces on the GPUs); None for one replica, as Gluon's Trainer has none for one device."""
    if plan.processes > 1:
        if "kvstore" not in _DIST:
            raise RuntimeError("call init_distributed(plan) first: it joins MXNet's other workers")
        return _DIST["kvstore"]
    if plan.replicas == 1:
        return None
    return mx.kv.create("device" if mx.context.num_gpus() else "local")


def _with_sync_batch_norm(model: nn.HybridBlock, devices: int) -> nn.HybridBlock:
    """The model again, its BatchNorm layers Gluon's SyncBatchNorm over ``devices``, sharing its parameters."""
    if dtype_of(model) != "float32":
        raise ValueError(
            f"--sync-bn: Gluon's SyncBatchNorm computes in float32 only in MXNet 1.9.1, and this model is "
            f"{dtype_of(model)}; build it in float32, or train without --sync-bn (BatchNorm per replica)"
        )
    params = model.collect_params()
    layers = sum(1 for name in params.keys() if name.endswith("running_mean"))
    needed, have = 10 * layers * devices, int(os.environ.get("MXNET_CPU_TEMP_COPY") or 1)
    if not mx.context.num_gpus() and have < needed:
        # Measured: 64 copies for the tests' 5 BatchNorm layers on 2 contexts, 96 for ResNet-18's 17, 512 for
        # ResNet-50's 53; fewer hang at the first step.
        raise ValueError(
            f"--sync-bn on {devices} CPU contexts: Gluon's SyncBatchNorm waits in each context for the others, and "
            "MXNet's CPU contexts share its temporary workspaces (MXNET_CPU_TEMP_COPY of them, default 1), so "
            f"with too few the first step hangs. For this model's {layers} BatchNorm layers start the process with "
            f"MXNET_CPU_TEMP_COPY={needed} or more in its environment (memory grows with it), train on GPUs, or "
            "train without --sync-bn (BatchNorm per replica)"
        )
    with semantics_of(model), synchronised_batch_norm(devices):
        options = dict(prefix=model.prefix, params=params)  # the same names, so the same Parameters
        if isinstance(model, ResNet):
            copy = ResNet(spec=model.spec, lr=model.lr, dtype="float32", **options)
        else:
            copy = make_block(model.spec, **options)
    if {id(p) for p in copy.collect_params().values()} != {id(p) for p in params.values()}:
        raise RuntimeError("the synchronised copy of the model did not find all of its parameters by name")
    return copy


@hook
def replicate(model: nn.HybridBlock, plan: Plan) -> nn.HybridBlock:
    """The model itself, its parameters copied to every context of the plan (Gluon's ``reset_ctx``); with
    ``sync_bn`` and several devices, a second Gluon model with SyncBatchNorm layers that shares the model's
    parameters (the same arrays). Across processes, process 0's weights and statistics go to all."""
    contexts = _contexts(plan.devices)
    if plan.sync_bn and plan.devices > 1:
        model = _with_sync_batch_norm(model, plan.devices)
    with semantics_of(model):
        model.collect_params().reset_ctx(contexts)
        if plan.processes > 1:
            kvstore = _kvstore(plan)
            for param in model.collect_params().values():
                kvstore.broadcast(next(_KEYS), param.list_data()[0], out=param.list_data())
    return model


@hook
def make_parallel_train_step(
    model: nn.HybridBlock, plan: Plan, lr: float | None = None, mixed_precision: bool = False
) -> Callable[..., float | Callable[[], float]]:
    """The book's multi-device Gluon step: per context the summed cross-entropy of its rows, each backward,
    then ``trainer.step(n)``: the kvstore sums the gradients of all replicas and the Trainer divides by the
    global batch ``n``. That is the contract's weighting: ``loss_weights[r] * mean_r = replicas * sum_r / n``,
    averaged over the replicas. Each context's BatchNorm statistics, updated in its backward pass, are then
    averaged over the replicas through the kvstore; the loss is the global batch's, summed there too."""
    dtype = check_mixed_precision(NAME, dtype_of(model), mixed_precision)
    lr = learning_rate_of(model, lr)
    contexts, kvstore = _contexts(plan.devices), _kvstore(plan)
    if any(ctx not in p.list_ctx() for p in model.collect_params().values() for ctx in contexts):
        raise ValueError("the model is not on the plan's contexts: train the model that replicate(model, plan) returns")
    # One context in this process (one replica, or one per process): the plain step's static memory, without
    # which this step ran at 0.75x the plain one on one replica (27.1 against 36.3 images/s, ResNet-18, batch 128).
    # Several contexts in one process keep Gluon's default graph: with static memory, MXNet 1.9.1 left their
    # BatchNorm running averages wrong (17% off in tests/test_parallel.py's two replicas on two CPU contexts).
    if len(contexts) == 1:
        _hybridize(model)
    else:
        model.hybridize()
    initialize(model)
    params = model.collect_params().values()
    trainable = [p for p in params if p.grad_req != "null"]
    statistics = [p for p in params if p.grad_req == "null"]  # BatchNorm's running averages
    with semantics_of(model):
        # Statistics left out: the Trainer would broadcast context 0's at its first step, after every context's
        # backward had moved its own.
        trainer = gluon.Trainer(trainable, "sgd", {"learning_rate": lr}, kvstore=kvstore, update_on_kvstore=False)
        if plan.processes > 1:
            if _DIST.setdefault("trainer", trainer) is not trainer:  # its keys are its parameters' indices
                raise RuntimeError("MXNet's 'dist_sync' kvstore takes one Trainer: one data-parallel step per process")
            # The Trainer puts the weights in the kvstore at its first step, and its pull of them there does not
            # wait for its push of the gradients under the same key: now and once done, not racing with them.
            trainer._init_kvstore()
            trainer._init_params()
            mx.nd.waitall()
        loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
        keys = {}
        if kvstore is not None:
            keys = {p.name: next(_KEYS) for p in statistics}
            loss_key = next(_KEYS)
            for p in statistics:
                kvstore.init(keys[p.name], p.list_data()[0])
            kvstore.init(loss_key, _kind_of(trainable[0]).zeros((1,), dtype=dtype))

    def train_step(x: np.ndarray, labels: np.ndarray, wait: bool = True) -> float | Callable[[], float]:
        rows = [plan.replica_slices(len(x))[r] for r in plan.local_replicas]
        with semantics_of(model):
            inputs = []
            for ctx, part in zip(contexts, rows):
                with ctx:  # split_and_load's copy of each replica's rows onto its context
                    inputs.append((to_native(x[part], dtype), to_native(labels[part], dtype)))
            with autograd.record(train_mode=True):
                losses = [loss_fn(model(xs), ys) for xs, ys in inputs]  # one loss per example
            autograd.backward(losses)  # each replica's gradient of its sum (and its BatchNorm statistics)
            trainer.step(len(x))  # summed over all replicas, divided by the global batch
            sums = [loss.sum().reshape((1,)) for loss in losses]
            if kvstore is not None:
                for p in statistics:
                    arrays = p.list_data()
                    kvstore.pushpull(keys[p.name], arrays)  # each context's array: the sum over all replicas
                    for array in arrays:
                        array *= 1 / plan.replicas
                kvstore.pushpull(loss_key, sums)
            total = sums[0] / len(x)
        return _scalar(total) if wait else lambda: _scalar(total)

    return train_step


def _kind_of(param: gluon.Parameter) -> Any:
    """``mx.np`` or ``mx.nd``: the module making arrays of the parameter's kind."""
    return mx.np if isinstance(param.list_data()[0], mx.np.ndarray) else mx.nd


@hook
def agree(plan: Plan, fingerprint: str) -> None:
    """Through the 'dist_sync' kvstore: each worker puts its fingerprint's SHA-256 in its own slot of a
    zero vector, and the kvstore's sum gives every worker all of them."""
    if plan.processes == 1:
        return
    kvstore, digest = _kvstore(plan), np.frombuffer(hashlib.sha256(fingerprint.encode()).digest(), np.uint8)
    mine = np.zeros((plan.processes, digest.size))
    mine[plan.process_index] = digest
    with numpy_semantics(False):  # legacy arrays, whatever the caller's semantics
        key, everyone = next(_KEYS), mx.nd.array(mine, dtype="float64")
        kvstore.init(key, mx.nd.zeros_like(everyone))
        kvstore.pushpull(key, everyone)
        digests = everyone.asnumpy()
    differ = [index for index in range(1, plan.processes) if not np.array_equal(digests[index], digests[0])]
    if differ:
        raise ValueError(
            f"the settings of process{'es' if len(differ) > 1 else ''} {', '.join(map(str, differ))} differ from "
            "process 0's (model, data, batch size, learning rate, epochs, devices, --sync-bn, the resumed epoch): "
            "start every worker with the same command line"
        )


@hook
def launch(plan: Plan, target: Callable[..., Any], args: tuple) -> dict[int, Any] | None:
    """None: one MXNet process drives all its contexts, and several processes are started by MXNet's launcher
    (``tools/launch.py``), not from here."""
    return None
