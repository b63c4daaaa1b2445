"""Named points where a test can kill this process with SIGKILL, to prove that nothing is lost there.

``RESNET_FAULT=after-checkpoint:2 resnet train ...`` kills the run (``kill -9``, no cleanup, no atexit) the
second time it reaches the point ``after-checkpoint``: between writing epoch 2's checkpoint and its
metrics. The suite in tests/test_faults.py uses every point and then checks that ``--resume`` ends with
the same weights and metrics as an uninterrupted run. With the variable unset (always, outside tests) a
point costs one dictionary lookup.

The points (``POINTS``) are, in the order a run reaches them:

* ``step``: after a train step has been queued (counted over the whole run, so ``step:5`` is the fifth);
* ``write:<file>``: inside an atomic write of ``<file>`` (e.g. ``write:last.safetensors``), after the
  temporary file is complete and before it is renamed over the old one;
* ``after-checkpoint``: an epoch's checkpoint is written, its metrics.csv, curves.png and run.json not yet;
* ``after-metrics``: metrics.csv is written, curves.png and run.json not yet;
* ``epoch-end``: everything of the epoch is written.
"""

from __future__ import annotations

import os
import signal

__all__ = ["POINTS", "fault_point"]

POINTS = ("step", "write:<file>", "after-checkpoint", "after-metrics", "epoch-end")
_VARIABLE = "RESNET_FAULT"
_reached: dict[str, int] = {}


def _target() -> tuple[str, int] | None:
    """The point and count that RESNET_FAULT names, or None; ValueError for a malformed value."""
    value = os.environ.get(_VARIABLE, "").strip()
    if not value:
        return None
    name, _, count = value.rpartition(":") if value.rpartition(":")[2].isdigit() else (value, "", "1")
    if not name or int(count) < 1:
        raise ValueError(f"{_VARIABLE}={value!r}: expected POINT or POINT:COUNT (COUNT >= 1), POINT one of {POINTS}")
    return name, int(count)


def fault_point(name: str) -> None:
    """Kill this process with SIGKILL if RESNET_FAULT names ``name`` and this is its COUNT-th arrival."""
    target = _target()
    if target is None or target[0] != name:
        return
    _reached[name] = _reached.get(name, 0) + 1
    if _reached[name] == target[1]:
        os.kill(os.getpid(), signal.SIGKILL)
