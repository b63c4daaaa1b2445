"""Data-parallel training for Flax models through JAX's own engine: ``jax.sharding`` and ``jax.distributed``.

JAX has no wrapper around a model, as PyTorch's DistributedDataParallel is, nor worker processes per device: one
process drives all its local devices, and a training step is one jitted computation over a ``Mesh`` of the
replicas' devices (one axis, ``"data"``), the weights replicated, the global batch sharded along it. The step is a
``jax.shard_map`` because BatchNorm needs each replica's own rows: per-replica statistics by default, or Flax's
synchronised ``BatchNorm(axis_name="data")`` with ``plan.sync_bn`` (``layers.synchronised_batch_norm``). Each
replica returns the mean over the replicas (``lax.pmean``) of its loss and of its BatchNorm averages, and JAX
differentiates that sharded loss as a whole: the transpose of the replicated weights is the all-reduce of the
replicas' gradients, so that the step is one SGD step on the global batch's mean loss, the same everywhere.

Several hosts: one process per host, each with ``--devices`` local devices, joined by ``jax.distributed``
(``--coordinator``, ``--num-processes``, ``--process-id``, or JAX's ``JAX_COORDINATOR_ADDRESS`` ... variables);
each process puts its replicas' rows of the global batch in (``jax.make_array_from_process_local_data``), and the
mesh spans every process's devices. On a CPU the devices are JAX's host-platform devices (``jax_num_cpu_devices``,
set before JAX starts its backend), and processes meet through JAX's gloo collectives.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import optax
from jax import lax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from resnet.backends.jax.hooks import LAYOUT, dtype_of, set_variables, variables
from resnet.backends.jax.layers import cpu_jit, synchronised_batch_norm
from resnet.backends.jax.train import _in_bfloat16, _sgd_step, _static

from resnet.contract import PARALLEL_HOOKS, check_mixed_precision, declared, hook, learning_rate_of
from resnet.layouts import array_to_native
from resnet.parallel import Plan

__all__ = list(PARALLEL_HOOKS)

NAME = declared(__name__).name
AXIS = "data"  # the mesh's one axis: the replicas
LOOPBACK = ("127.0.0.1", "localhost", "[::1]")
REPLICATED, SHARDED = PartitionSpec(), PartitionSpec(AXIS)


@hook
def init_distributed(plan: Plan) -> Plan:
    """``jax.distributed.initialize`` for several processes (a coordinator on a loopback address binds to it
    alone); on a CPU, ``plan.devices`` host-platform devices (``jax_num_cpu_devices``), both before JAX starts
    its backend."""
    if plan.replicas == 1:
        return plan
    if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        try:
            jax.config.update("jax_num_cpu_devices", plan.devices)
        except RuntimeError:  # JAX has started already: the devices are those it has (checked below)
            pass
    if plan.processes > 1:
        _join(plan)
    found = jax.local_devices()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if found[0].platform == "cpu" and plan.devices > cores:
        # XLA would make the host devices, but they would share the cores: as in the other backends, at most one
        # replica per core, so that "more devices than exist" means the same everywhere.
        raise ValueError(
            f"--devices {plan.devices} asks for {plan.devices} CPU replicas, but this host has {cores} CPU core"
            f"{'s' if cores > 1 else ''}: use at most {cores}, or more hosts (--num-processes)"
        )
    if len(found) < plan.devices:
        how = (
            "This backend makes CPU devices when JAX starts, but JAX had started already: set XLA_FLAGS="
            f"--xla_force_host_platform_device_count={plan.devices} before Python starts, or call "
            "init_distributed(plan) before anything else runs in JAX"
            if found[0].platform == "cpu"
            else "--devices is at most the GPUs JAX sees (CUDA_VISIBLE_DEVICES)"
        )
        raise ValueError(
            f"--devices {plan.devices} asks for {plan.devices} devices in this process, but JAX has {len(found)} "
            f"here ({', '.join(map(str, found))}). {how}; more hosts add their devices (--num-processes)."
        )
    return plan


def _join(plan: Plan) -> None:
    """This process joins ``plan``'s others at the coordinator, through ``jax.distributed``."""
    if jax.distributed.is_initialized():
        if (jax.process_count(), jax.process_index()) != (plan.processes, plan.process_index):
            raise ValueError(
                f"this process joined {jax.process_count()} JAX processes already, as process {jax.process_index()}; "
                f"it cannot be process {plan.process_index} of {plan.processes} as well"
            )
        return
    if plan.coordinator is None:
        raise ValueError(
            f"{plan.processes} JAX processes need a coordinator to meet at: Plan(coordinator='HOST:PORT') (the "
            "address of process 0, e.g. 127.0.0.1:12355), --coordinator or JAX_COORDINATOR_ADDRESS"
        )
    host = plan.coordinator.rpartition(":")[0]
    try:
        jax.distributed.initialize(
            plan.coordinator,
            plan.processes,
            plan.process_index,
            coordinator_bind_address=plan.coordinator if host in LOOPBACK else None,
        )
    except RuntimeError as error:  # JAX had started; a coordinator that never answers ends the process instead
        raise ValueError(
            f"process {plan.process_index} of {plan.processes} could not join the others at {plan.coordinator} "
            f"through jax.distributed ({error}); start every process with the same --coordinator (process 0's "
            "address) and --num-processes, and a --process-id each, before anything else runs in JAX"
        ) from error


def _mesh(plan: Plan) -> Mesh:
    """The replicas' devices in replica order: each process's first ``plan.devices`` local devices."""
    if jax.process_count() != plan.processes:
        raise ValueError(
            f"the plan has {plan.processes} processes but JAX has {jax.process_count()}: call "
            "init_distributed(plan) first, in every process, before any model is built"
        )
    per_process = [[d for d in jax.devices() if d.process_index == p][: plan.devices] for p in range(plan.processes)]
    if any(len(devices) < plan.devices for devices in per_process):
        raise ValueError(f"--devices {plan.devices}: a process has fewer devices; call init_distributed(plan) first")
    return Mesh(np.array([d for devices in per_process for d in devices]), (AXIS,))


def _global(mesh: Mesh, spec: PartitionSpec, plan: Plan, value: np.ndarray) -> jax.Array:
    """A global array of this process's rows of ``value`` (all of it when replicated), on ``mesh``."""
    local = value[plan.process_slice(len(value))] if spec == SHARDED else value
    return jax.make_array_from_process_local_data(NamedSharding(mesh, spec), local, value.shape)


@hook
def launch(plan: Plan, target: Callable[..., Any], args: tuple) -> dict[int, Any] | None:
    """None: a JAX process drives all its devices itself, and several hosts each start their own process."""
    return None


@hook
def replicate(model: nn.Module, plan: Plan) -> nn.Module:
    """The model itself, its variables replicated over the plan's mesh (with several processes, process 0's,
    broadcast through ``multihost_utils``); ``sync_bn`` changes how the step runs BatchNorm, not the model."""
    state = variables(model)
    if plan.processes > 1:
        state = multihost_utils.broadcast_one_to_all(state)
    mesh = _mesh(plan)
    state = jax.tree_util.tree_map(lambda leaf: _global(mesh, REPLICATED, plan, np.asarray(leaf)), state)
    set_variables(model, state)
    return model


@functools.partial(cpu_jit, static_argnums=(0, 1, 2, 8), donate_argnums=(3, 4))
def _parallel_sgd_step(
    module: nn.Module,
    mesh: Mesh,
    sync_bn: bool,
    params: Any,
    batch_stats: Any,
    x: jax.Array,
    labels: jax.Array,
    lr: jax.Array,
    mixed_precision: bool,
) -> tuple[Any, Any, jax.Array]:
    """One SGD step over the mesh, for a batch that the replicas share evenly (each loss weight is 1): the
    replicas' mean loss, a ``shard_map`` over their rows, differentiated by JAX."""

    def replica_loss(params: Any, batch_stats: Any, x: jax.Array, labels: jax.Array) -> tuple[jax.Array, Any]:
        weights, batch = _in_bfloat16(params, x) if mixed_precision else (params, x)
        with synchronised_batch_norm(AXIS if sync_bn else None):
            logits, updates = module.apply(
                {"params": weights, "batch_stats": batch_stats}, batch, mutable=["batch_stats"]
            )
        loss = optax.softmax_cross_entropy_with_integer_labels(logits.astype(lr.dtype), labels).mean()
        return lax.pmean(loss, AXIS), lax.pmean(updates["batch_stats"], AXIS)  # the replicas' means

    sharded = jax.shard_map(
        replica_loss, mesh=mesh, in_specs=(REPLICATED, REPLICATED, SHARDED, SHARDED), out_specs=REPLICATED
    )
    (loss, batch_stats), grads = jax.value_and_grad(sharded, has_aux=True)(params, batch_stats, x, labels)
    return _sgd(params, grads, lr), batch_stats, loss


@functools.partial(cpu_jit, static_argnums=(0, 1, 7), donate_argnums=(2, 3))
def _uneven_sgd_step(
    module: nn.Module,
    slices: tuple[tuple[int, int], ...],
    params: Any,
    batch_stats: Any,
    x: jax.Array,
    labels: jax.Array,
    lr: jax.Array,
    mixed_precision: bool,
) -> tuple[Any, Any, jax.Array]:
    """The same step for a batch that the replicas cannot share evenly (the last of an epoch), which a
    ``shard_map`` cannot split: every device computes every replica's rows in turn, each with its own BatchNorm
    statistics, its loss weighted by its share of the batch."""

    def loss_fn(params: Any) -> tuple[jax.Array, Any]:
        weights, batch = _in_bfloat16(params, x) if mixed_precision else (params, x)
        loss, updates = 0.0, []
        for start, stop in slices:
            logits, update = module.apply(
                {"params": weights, "batch_stats": batch_stats}, batch[start:stop], mutable=["batch_stats"]
            )
            share = (stop - start) / len(x)
            ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(lr.dtype), labels[start:stop])
            loss, updates = loss + share * ce.mean(), [*updates, update["batch_stats"]]
        return loss, jax.tree_util.tree_map(lambda *replicas: sum(replicas) / len(replicas), *updates)

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return _sgd(params, grads, lr), batch_stats, loss


def _sgd(params: Any, grads: Any, lr: jax.Array) -> Any:
    """The plain SGD update of ``make_train_step`` (``optax.sgd``, no momentum: its state is empty)."""
    optimizer = optax.sgd(lr)
    updates, _ = optimizer.update(grads, optimizer.init(params), params)
    return optax.apply_updates(params, updates)


@hook
def make_parallel_train_step(
    model: nn.Module, plan: Plan, lr: float | None = None, mixed_precision: bool = False
) -> Callable[..., float | Callable[[], float]]:
    """One jitted computation per step over the plan's mesh, donating the old weights' buffers. A batch that
    the replicas share evenly (every loss weight 1) goes through the ``shard_map``; one that they do not (the
    last of an epoch) is computed replica by replica on every device, or, with ``sync_bn``, as the one-device
    step on the whole batch, which it then is."""
    dtype = check_mixed_precision(NAME, dtype_of(model), mixed_precision)
    lr = learning_rate_of(model, lr)
    module, mesh = _static(model, training=True), _mesh(plan)
    rate = _global(mesh, REPLICATED, plan, np.asarray(lr, dtype))

    def parallel_step(x: np.ndarray, labels: np.ndarray, wait: bool = True) -> float | Callable[[], float]:
        n, state = len(x), variables(model)
        slices = plan.replica_slices(n)  # ValueError for fewer rows than replicas
        batch, labels = array_to_native(np.asarray(x, dtype), LAYOUT), np.asarray(labels, np.int32)
        if n % plan.replicas == 0:
            params, batch_stats, loss = _parallel_sgd_step(
                module, mesh, plan.sync_bn, state["params"], state["batch_stats"],
                _global(mesh, SHARDED, plan, batch), _global(mesh, SHARDED, plan, labels), rate, mixed_precision,
            )  # fmt: skip
        else:
            arguments = (
                state["params"],
                state["batch_stats"],
                _global(mesh, REPLICATED, plan, batch),
                _global(mesh, REPLICATED, plan, labels),
                rate,
                mixed_precision,
            )
            if plan.sync_bn:
                params, batch_stats, loss = _sgd_step(module, *arguments)
            else:
                params, batch_stats, loss = _uneven_sgd_step(
                    module, tuple((s.start, s.stop) for s in slices), *arguments
                )
        set_variables(model, {"params": params, "batch_stats": batch_stats})
        return float(loss) if wait else lambda: float(loss)

    return parallel_step


@hook
def agree(plan: Plan, fingerprint: str) -> None:
    """The fingerprints, as bytes, gathered from every process by ``multihost_utils.process_allgather``."""
    if plan.processes == 1:
        return
    text = np.frombuffer(fingerprint.encode(), np.uint8)
    longest = int(multihost_utils.process_allgather(np.asarray(len(text), np.int32)).max())
    gathered = multihost_utils.process_allgather(np.pad(text, (0, longest - len(text)), constant_values=0))
    texts = [bytes(row).rstrip(b"\0").decode(errors="replace") for row in np.asarray(gathered)]
    differ = [index for index, other in enumerate(texts) if other != texts[0]]
    if differ:
        shown = "; ".join(f"process {index}: {_difference(texts[index], texts[0])}" for index in differ)
        raise ValueError(
            f"the processes were started with different settings from process 0's ({shown}); start every process "
            "with the same settings (only --process-id differs)"
        )


def _difference(text: str, main: str) -> str:
    """What differs between two fingerprints: the settings that differ when they are JSON objects (``fit``'s),
    else the whole text."""
    try:
        ours, theirs = json.loads(text), json.loads(main)
        keys = [*theirs, *(key for key in ours if key not in theirs)]
        return ", ".join(
            f"{key} {ours.get(key)} (process 0: {theirs.get(key)})" for key in keys if ours.get(key) != theirs.get(key)
        )
    except (ValueError, TypeError, AttributeError):  # not JSON objects
        return text
