"""The machine a run measured: CPU, cores, load, versions and threads, and the CPU time that other processes
used meanwhile (read from /proc on Linux), which tells whether the figures can be trusted."""

from __future__ import annotations

import os
import platform
from typing import Any

import numpy as np

from resnet.bench.kit import Kit

__all__ = ["cpu_seconds", "machine_info", "other_cpu_load"]

_THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OMP_WAIT_POLICY",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "XLA_FLAGS",
    "TF_NUM_INTRAOP_THREADS",
    "TF_NUM_INTEROP_THREADS",
    "MXNET_CPU_WORKER_NTHREADS",
    "TF_ENABLE_ONEDNN_OPTS",
    "CUDA_VISIBLE_DEVICES",
)


def machine_info(kit: Kit | None = None) -> dict[str, Any]:
    """CPU model, cores, load average, Python and (with a kit) the framework versions and threads."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), cpu)
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        # Thread settings change the numbers a lot on a small machine; record any that are set.
        "thread_env": {k: v for k, v in os.environ.items() if k in _THREAD_VARIABLES},
    }
    if kit is not None:
        info.update(kit.info())
    return info


def cpu_seconds() -> tuple[float, float] | None:
    """(busy CPU seconds of the whole machine since boot, CPU seconds of this process and its finished children),
    read from /proc (Linux); None elsewhere. Their changes over a run give the CPU that *other* processes used."""
    try:
        with open("/proc/stat") as handle:
            machine = [int(value) for value in handle.readline().split()[1:]]
        with open("/proc/self/stat") as handle:
            own = handle.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    except (OSError, ValueError):
        return None
    tick = os.sysconf("SC_CLK_TCK")
    # user nice system idle iowait irq softirq steal guest guest_nice; guest time is already in user and nice.
    busy = sum(machine[:8]) - machine[3] - machine[4]
    mine = sum(int(value) for value in own[11:15])  # utime, stime, cutime, cstime: all threads, waited-for children
    return busy / tick, mine / tick


def other_cpu_load(
    before: tuple[float, float] | None, after: tuple[float, float] | None, seconds: float
) -> float | None:
    """Average number of cores that processes other than this one kept busy between two ``cpu_seconds()``."""
    if before is None or after is None or seconds <= 0:
        return None
    return max(0.0, ((after[0] - before[0]) - (after[1] - before[1])) / seconds)
