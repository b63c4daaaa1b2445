"""Data-parallel training of Keras models through ``tf.distribute``, TensorFlow's own engine (the contract's
parallel hooks, ``resnet.contract``; the plan and the batch split are ``resnet.parallel``'s).

* One process: ``tf.distribute.MirroredStrategy`` over ``plan.devices`` local devices, GPUs where TensorFlow
  sees them, else logical CPU devices (``tf.config.set_logical_device_configuration``, which TensorFlow accepts
  only before it starts: ``init_distributed`` comes first).
* Several processes: ``tf.distribute.MultiWorkerMirroredStrategy``, its workers listed in ``TF_CONFIG``,
  created in ``init_distributed`` before any other TensorFlow operation (it starts this worker's server).

This is the book's choice for TensorFlow ("Training on Multiple GPUs"), and Keras' own: Keras 3's distribution
API (``keras.distribution``) runs on JAX only. ``replicate`` makes the model again under ``strategy.scope()``
(its Keras config and build config, so its variables are mirrored across the replicas) with the same weights;
with ``plan.sync_bn`` its BatchNorm layers are Keras' ``BatchNormalization(synchronized=True)``. The step runs
``strategy.run`` on per-replica values made from the plan's slices of the global batch; Keras' optimizer sums
the replicas' gradients (an all-reduce), so each replica's mean loss is weighted by its share of the batch
(``plan.loss_weights / plan.replicas``) and the sum is the gradient of the global batch's mean loss.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf  # before keras, as in resnet.backends.tensorflow.layers

import keras  # isort: skip

from resnet.backends.tensorflow.hooks import _child, _root, dtype_of, get_arrays, set_arrays

from resnet.contract import PARALLEL_HOOKS, check_mixed_precision, declared, hook, learning_rate_of
from resnet.layouts import array_to_native
from resnet.parallel import Plan
from resnet.walk import native_layers

__all__ = list(PARALLEL_HOOKS)

NAME, LAYOUT = declared(__name__).name, declared(__name__).layout

#: Seconds the workers of a multi-worker run wait for each other to start before giving up.
JOIN_TIMEOUT_S = 300

_strategies: dict[tuple[int, int], tf.distribute.Strategy] = {}  # (devices, processes) -> this process's strategy


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _local_devices(count: int) -> list[str]:
    """The names of ``count`` local devices: GPUs if TensorFlow sees any, else logical CPU devices, made here
    (one per core at most: more would only share the cores) while TensorFlow has not started; ValueError when
    there are too few."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        if count > len(gpus):
            raise ValueError(
                f"--devices {count}: TensorFlow sees {len(gpus)} GPU{'s' if len(gpus) > 1 else ''} on this host; use "
                f"--devices {len(gpus)} or fewer, or start more workers (TF_CONFIG) on other hosts"
            )
        return [f"/device:GPU:{i}" for i in range(count)]
    if count > _cores():
        raise ValueError(
            f"--devices {count}: TensorFlow sees no GPU here, and on a CPU each replica is a logical CPU device, at "
            f"most one per core; this host has {_cores()}: use --devices {_cores()} or fewer, or start more workers "
            "(TF_CONFIG) on other hosts"
        )
    cpu = tf.config.list_physical_devices("CPU")[0]
    if count > 1 and len(tf.config.get_logical_device_configuration(cpu) or [None]) < count:
        try:
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)
        except RuntimeError:  # TensorFlow has started: its devices are fixed
            pass
    made = len(tf.config.list_logical_devices("CPU"))
    if made < count:
        raise ValueError(
            f"--devices {count}: TensorFlow has started with {made} CPU device{'s' if made > 1 else ''}, and it makes "
            "logical CPU devices only before it starts. Call init_distributed(Plan(devices="
            f"{count})) at the start of the program, before any model is built or any TensorFlow operation runs"
        )
    return [f"/device:CPU:{i}" for i in range(count)]


def _join(plan: Plan) -> tf.distribute.Strategy:
    """This process's MultiWorkerMirroredStrategy, the workers and this one's index from ``TF_CONFIG``."""
    if not os.environ.get("TF_CONFIG"):
        raise ValueError(
            f"{plan.processes} TensorFlow processes find each other through TF_CONFIG, which is not set: give every "
            'worker the same cluster and its own index, e.g. TF_CONFIG=\'{"cluster": {"worker": ["host0:12345", '
            f'"host1:12345"]}}, "task": {{"type": "worker", "index": {plan.process_index}}}}}\''
        )
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    cluster = resolver.cluster_spec().as_dict()
    workers, chiefs = len(cluster.get("worker", [])) + len(cluster.get("chief", [])), len(cluster.get("chief", []))
    index = (resolver.task_id or 0) + (chiefs if resolver.task_type == "worker" else 0)  # resnet.parallel's order
    if (workers, index) != (plan.processes, plan.process_index):
        raise ValueError(
            f"the plan is process {plan.process_index} of {plan.processes}, but TF_CONFIG makes this worker "
            f"{index} of {workers}: take the plan from the environment (resnet.parallel.plan_from_environment)"
        )
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus and plan.devices > 1:
        raise ValueError(
            f"--devices {plan.devices}: with several workers (TF_CONFIG), TensorFlow's MultiWorkerMirroredStrategy "
            "drives one CPU device per worker (or every GPU it sees): use --devices 1 on a CPU, and more workers"
        )
    try:
        if gpus:  # MultiWorkerMirroredStrategy takes every GPU it sees
            tf.config.set_visible_devices(gpus[: len(_local_devices(plan.devices))], "GPU")
        _bound_the_join(resolver)
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    except RuntimeError as error:
        raise ValueError(
            "TensorFlow has started before the workers joined: call init_distributed(plan) at the start of the "
            f"program, before any model is built or any TensorFlow operation runs ({error})"
        ) from None
    except (tf.errors.DeadlineExceededError, tf.errors.UnavailableError) as error:
        raise ValueError(
            f"the {plan.processes} TensorFlow workers did not all start within {JOIN_TIMEOUT_S} s: TF_CONFIG lists "
            f"{', '.join(cluster.get('chief', []) + cluster.get('worker', []))} and this is worker "
            f"{plan.process_index}. Start every worker with the same cluster in TF_CONFIG and its own task index "
            f"({str(error).splitlines()[0]})"
        ) from None
    if strategy.num_replicas_in_sync != plan.replicas:
        raise ValueError(
            f"the plan has {plan.replicas} replicas, but TensorFlow's workers have {strategy.num_replicas_in_sync}"
        )
    return strategy


def _bound_the_join(resolver: tf.distribute.cluster_resolver.ClusterResolver) -> None:
    """Make the workers' meeting fail after ``JOIN_TIMEOUT_S`` instead of waiting for ever: the coordination
    service that MultiWorkerMirroredStrategy would configure, plus a registration barrier with a timeout.
    TensorFlow has no public option for it; without these internals the wait is TensorFlow's own, unbounded.
    (Once the workers have met, the service's heartbeats end the others' collectives when one worker dies.)"""
    try:
        from tensorflow.compiler.xla.tsl.protobuf.coordination_config_pb2 import CoordinatedJob
        from tensorflow.python.distribute.multi_worker_util import coordination_leader
        from tensorflow.python.eager import context
    except ImportError:
        return
    spec = resolver.cluster_spec()
    jobs = [CoordinatedJob(name=job, num_tasks=spec.num_tasks(job)) for job in ("chief", "worker") if job in spec.jobs]
    context.context().configure_coordination_service(
        "standalone",
        service_leader=coordination_leader(spec),
        coordinated_jobs=jobs,
        cluster_register_timeout_in_ms=JOIN_TIMEOUT_S * 1000,
    )
    context.context().coordination_service.cluster_register_with_barrier = True


def _strategy(plan: Plan) -> tf.distribute.Strategy:
    """The strategy of ``plan``'s replicas in this process, made once (a one-process plan's when first needed)."""
    key = (plan.devices, plan.processes)
    if key not in _strategies:
        if plan.processes > 1:
            if any(processes > 1 for _, processes in _strategies):
                raise ValueError("this process has joined other workers already; a process joins them once")
            _strategies[key] = _join(plan)
        else:
            _strategies[key] = tf.distribute.MirroredStrategy(_local_devices(plan.devices))
    return _strategies[key]


@hook
def init_distributed(plan: Plan) -> Plan:
    """Logical CPU devices, or the visible GPUs, and the strategy (MultiWorkerMirroredStrategy with workers,
    MirroredStrategy in one process); the plan is returned as it is (TF_CONFIG gives the index)."""
    if plan.replicas > 1:
        _strategy(plan)
    return plan


@hook
def launch(plan: Plan, target: Callable[..., Any], args: tuple) -> dict[int, Any] | None:
    """None: a TensorFlow process drives all its devices itself, and its workers are started as TF_CONFIG says."""
    return None


def _batch_norms(model: keras.layers.Layer) -> list[keras.layers.BatchNormalization]:
    return [
        layer
        for layer in native_layers(model.spec, _root(model), _child).values()
        if isinstance(layer, keras.layers.BatchNormalization)
    ]


@hook
def replicate(model: keras.layers.Layer, plan: Plan) -> keras.layers.Layer:
    """A copy made under ``strategy.scope()`` from the model's Keras config and build config (so it must be
    built), its variables mirrored on every replica, with the model's weights; with ``plan.sync_bn`` its
    BatchNorm layers are ``synchronized``."""
    if not model.built:
        raise ValueError("replicate(model, plan) copies a built model: build it first (rn.build(model, input_shape))")
    arrays = get_arrays(model)
    with _strategy(plan).scope():
        copy = type(model).from_config(model.get_config())
        for layer in _batch_norms(copy):
            layer.synchronized = plan.sync_bn  # Keras' synchronised BatchNorm all-reduces the batch's moments
        copy.build_from_config(model.get_build_config())
    set_arrays(copy, arrays)
    return copy


@hook
def make_parallel_train_step(
    model: keras.layers.Layer, plan: Plan, lr: float | None = None, mixed_precision: bool = False
) -> Callable[..., float | Callable[[], float]]:
    """A ``tf.function`` around ``strategy.run``, with ``keras.optimizers.SGD`` made in the strategy's scope (it
    all-reduces the gradients, summing them); each replica's inputs are its rows of the batch in this process
    (``strategy.experimental_distribute_values_from_function``)."""
    dtype = check_mixed_precision(NAME, dtype_of(model), mixed_precision)
    strategy = _strategy(plan)
    with strategy.scope():
        optimizer = keras.optimizers.SGD(learning_rate=learning_rate_of(model, lr))
        optimizer.build(model.trainable_weights)

    def replica_step(x: tf.Tensor, labels: tf.Tensor, share: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            # this replica's mean loss times its share of the batch: the replicas' sum is the batch's mean loss
            loss = share * tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
        optimizer.apply(tape.gradient(loss, model.trainable_weights), model.trainable_weights)
        return loss

    @tf.function(reduce_retracing=True)  # one shape-generic trace for a smaller last batch
    def compiled_step(x: Any, labels: Any, share: Any) -> tf.Tensor:
        losses = strategy.run(replica_step, args=(x, labels, share))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None)

    def train_step(x: np.ndarray, labels: np.ndarray, wait: bool = True) -> float | Callable[[], float]:
        n, native, labels = len(x), array_to_native(np.asarray(x, dtype=dtype), LAYOUT), np.asarray(labels, np.int64)
        slices, weights = plan.replica_slices(n), plan.loss_weights(n)

        def rows(context: tf.distribute.experimental.ValueContext) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
            replica = context.replica_id_in_sync_group  # among all processes' replicas
            share = weights[replica] / plan.replicas  # Keras sums the gradients: its rows' share of the batch
            return (
                tf.constant(native[slices[replica]]),
                tf.constant(labels[slices[replica]]),
                tf.constant(share, dtype),
            )

        loss = compiled_step(*strategy.experimental_distribute_values_from_function(rows))
        return float(loss) if wait else lambda: float(loss)

    return train_step


@hook
def agree(plan: Plan, fingerprint: str) -> None:
    """The fingerprints' bytes gathered from every worker with ``strategy.gather`` (a collective)."""
    if plan.processes == 1:
        return
    strategy = _strategy(plan)

    def gather(row: np.ndarray) -> np.ndarray:  # every replica's row, in replica order; one per process kept
        values = strategy.experimental_distribute_values_from_function(lambda _: tf.constant(row[None]))
        return strategy.gather(values, axis=0).numpy()[:: plan.devices]

    text = fingerprint.encode()
    sizes = gather(np.array([len(text)], np.int64))[:, 0]
    rows = gather(np.frombuffer(text.ljust(int(sizes.max()), b"\0"), np.uint8).astype(np.int64))
    texts = [bytes(row[:size].astype(np.uint8)).decode(errors="replace") for row, size in zip(rows, sizes)]
    differ = [i for i, other in enumerate(texts) if other != texts[0]]
    if differ:
        processes = ", ".join(map(str, differ))
        raise ValueError(
            f"the processes were started with different settings: process{'es' if len(differ) > 1 else ''} "
            f"{processes} differ{'' if len(differ) > 1 else 's'} from process 0; start every worker with the same "
            f"command and options. Process 0: {texts[0]}; " + "; ".join(f"process {i}: {texts[i]}" for i in differ)
        )
