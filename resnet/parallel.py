"""Data-parallel training, the framework-free part: the plan, each replica's share of a global batch, and the
launch settings from the command line or the environment each framework's launcher sets.

Every backend trains data-parallel through its framework's own engine (``resnet.contract``'s parallel hooks:
PyTorch's DistributedDataParallel, ``jax.sharding``, ``tf.distribute``, Gluon's kvstore). What they share is
here: a ``Plan`` says how many replicas there are (``devices`` per process times ``processes``), which process
this is, and whether BatchNorm is synchronised across replicas. Every process reads the same global batches
from the one NumPy pipeline (``resnet.batches.Batches``, the batches of a one-device run with the same seed) and
replica ``r`` takes ``replica_slices(n)[r]`` of each; the replicas' gradients, averaged by the engine, are the
global batch's because each replica's loss is weighted by ``loss_weights`` (its share of the batch).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["Plan", "check_global_batch", "plan_from_environment"]


def _count(value: object, what: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{what} must be an integer of at least {minimum}, got {value!r}")
    return value


@dataclass(frozen=True)
class Plan:
    """How a run is spread: ``devices`` replicas in each of ``processes`` processes (this one is
    ``process_index``), BatchNorm statistics per replica or, with ``sync_bn``, over the global batch.

    ``coordinator`` is the ``host:port`` the processes meet at (torchrun's rendezvous, JAX's coordinator);
    TensorFlow's workers find each other through ``TF_CONFIG`` and MXNet's through its launcher instead.
    ``Plan()`` is one replica: the plain train step.
    """

    devices: int = 1
    processes: int = 1
    process_index: int = 0
    sync_bn: bool = False
    coordinator: str | None = None

    def __post_init__(self) -> None:
        _count(self.devices, "the number of devices per process (--devices)")
        _count(self.processes, "the number of processes (--num-processes)")
        _count(self.process_index, "the process id (--process-id)", minimum=0)
        if self.process_index >= self.processes:
            raise ValueError(
                f"process id {self.process_index} does not exist among {self.processes} processes: ids are 0 to "
                f"{self.processes - 1}"
            )
        if not isinstance(self.sync_bn, bool):
            raise TypeError(f"sync_bn must be True or False, got {self.sync_bn!r}")
        if self.coordinator is not None:
            host, _, port = self.coordinator.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(
                    f"the coordinator must be host:port, such as 127.0.0.1:29500; got {self.coordinator!r}"
                )

    @property
    def replicas(self) -> int:
        """Replicas in all processes together."""
        return self.devices * self.processes

    @property
    def is_main(self) -> bool:
        """Whether this process writes the run's files and shows its progress (process 0)."""
        return self.process_index == 0

    @property
    def local_replicas(self) -> range:
        """The indices of this process's replicas among all."""
        first = self.process_index * self.devices
        return range(first, first + self.devices)

    def replica_slices(self, n: int) -> list[slice]:
        """Each replica's rows of a global batch of ``n``: contiguous, in replica order, sizes differing by at
        most one (the first ``n % replicas`` take one more), so the batch is covered exactly once."""
        if n < self.replicas:
            raise ValueError(
                f"a batch of {n} cannot be shared by {self.replicas} replicas (each needs at least one image)"
            )
        base, extra = divmod(n, self.replicas)
        bounds = [r * base + min(r, extra) for r in range(self.replicas + 1)]
        return [slice(bounds[r], bounds[r + 1]) for r in range(self.replicas)]

    def process_slice(self, n: int) -> slice:
        """The rows of a global batch of ``n`` that this process's replicas take together."""
        slices = self.replica_slices(n)
        return slice(slices[self.local_replicas[0]].start, slices[self.local_replicas[-1]].stop)

    def loss_weights(self, n: int) -> list[float]:
        """Per replica, what its mean loss is multiplied by: ``replicas * size / n``. The engines average the
        replicas' gradients, and the average of the weighted gradients is the gradient of the global batch's
        mean loss, also when the last batch of an epoch does not split evenly."""
        return [self.replicas * (s.stop - s.start) / n for s in self.replica_slices(n)]


def check_global_batch(batch_size: int, plan: Plan) -> None:
    """``--batch-size`` is the global batch: ValueError unless the plan's replicas share it evenly."""
    if batch_size % plan.replicas:
        low = max(plan.replicas, batch_size - batch_size % plan.replicas)
        raise ValueError(
            f"--batch-size {batch_size} is the global batch, split over {plan.replicas} replicas "
            f"({plan.devices} device{'s' if plan.devices > 1 else ''} x {plan.processes} process"
            f"{'es' if plan.processes > 1 else ''}), so it must be a multiple of {plan.replicas}: use {low} or "
            f"{low + plan.replicas}"
        )


def _int_from(env: Mapping[str, str], name: str) -> int | None:
    if not env.get(name):
        return None
    try:
        return int(env[name])
    except ValueError:
        raise ValueError(f"the environment variable {name} must be an integer, got {env[name]!r}") from None


def _tf_config(env: Mapping[str, str]) -> tuple[int, int] | None:
    """(workers, this worker's index) from ``TF_CONFIG``, TensorFlow's multi-worker description."""
    if not env.get("TF_CONFIG"):
        return None
    try:
        config = json.loads(env["TF_CONFIG"])
        workers = [*config["cluster"].get("chief", []), *config["cluster"]["worker"]]
        task = config["task"]
        index = int(task["index"]) + (len(config["cluster"].get("chief", [])) if task["type"] == "worker" else 0)
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(
            'TF_CONFIG must be JSON such as {"cluster": {"worker": ["127.0.0.1:12345", "127.0.0.1:12346"]}, '
            f'"task": {{"type": "worker", "index": 0}}}}; reading it failed: {error!r}'
        ) from None
    return len(workers), index


def plan_from_environment(
    backend: str,
    devices: int = 1,
    sync_bn: bool = False,
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    env: Mapping[str, str] | None = None,
) -> Plan:
    """The plan for ``backend`` from the command line's values and the variables its launcher sets.

    * PyTorch: ``torchrun`` sets ``WORLD_SIZE``, ``RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; each of its
      processes drives one device (``--nproc_per_node`` is the number of devices per host).
    * JAX: ``--coordinator``, ``--num-processes`` and ``--process-id``, or ``JAX_COORDINATOR_ADDRESS``,
      ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``; each process drives ``--devices`` local devices.
    * TensorFlow: ``TF_CONFIG`` lists the workers and names this one; each drives ``--devices`` devices.
    * MXNet: its launcher's ``DMLC_NUM_WORKER`` (the 'dist_sync' kvstore finds this worker's rank itself).
    """
    env = os.environ if env is None else env
    if backend == "torch" and (_int_from(env, "WORLD_SIZE") or 1) > 1:
        if devices not in (1, _int_from(env, "LOCAL_WORLD_SIZE")):  # launch()'s workers keep the --devices given
            raise ValueError(
                "under torchrun each process drives one device: give the devices per host as torchrun's "
                "--nproc_per_node, not --devices"
            )
        address = f"{env.get('MASTER_ADDR', '127.0.0.1')}:{env.get('MASTER_PORT', '29500')}"
        return Plan(1, _int_from(env, "WORLD_SIZE") or 1, _int_from(env, "RANK") or 0, sync_bn, address)
    if backend == "jax":
        coordinator = coordinator or env.get("JAX_COORDINATOR_ADDRESS") or None
        num_processes = num_processes if num_processes is not None else _int_from(env, "JAX_NUM_PROCESSES")
        process_id = process_id if process_id is not None else _int_from(env, "JAX_PROCESS_ID")
    if backend == "tensorflow" and (workers := _tf_config(env)) is not None:
        num_processes, process_id = workers
    if backend == "mxnet" and env.get("DMLC_ROLE") == "worker":
        num_processes = _int_from(env, "DMLC_NUM_WORKER")
    processes = num_processes if num_processes is not None else 1
    if processes > 1 and backend == "jax" and coordinator is None:
        raise ValueError(
            f"{processes} JAX processes need a coordinator to meet at: pass --coordinator HOST:PORT (the address "
            "of process 0, e.g. 127.0.0.1:12355) or set JAX_COORDINATOR_ADDRESS"
        )
    if processes > 1 and backend == "jax" and process_id is None:
        raise ValueError(f"{processes} processes: give each its --process-id (0 to {processes - 1})")
    if coordinator is not None and processes == 1 and backend == "jax":
        raise ValueError("--coordinator is for several processes: give --num-processes too (and --process-id)")
    return Plan(devices, processes, process_id or 0, sync_bn, coordinator)
