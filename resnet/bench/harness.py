"""The timing harness: both sides of a comparison warmed up, then alternated in one process; imports timed in
fresh processes. Framework-free: a side is any callable, and ``settle`` (the kit's ``wait``) waits for the work
a framework that runs asynchronously still has queued."""

from __future__ import annotations

import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from resnet.bench.settings import Settings

__all__ = ["Side", "measure", "measure_imports", "stats"]


@dataclass
class Side:
    """One side of a comparison: a synchronized step, and how much work (images, batches, FLOPs) it does."""

    step: Callable[[], Any]
    work: float


def stats(samples: list[float], steps: int) -> dict[str, Any]:
    """The JSON of one side's repeats: median, min, max, the samples and the steps each repeat took."""
    return {
        "median": statistics.median(samples),
        "min": min(samples),
        "max": max(samples),
        "samples": samples,
        "steps_per_repeat": steps,
    }


def _steps_for(side: Side, settings: Settings, min_steps: int, settle: Callable[[], None]) -> int:
    if settings.steps:
        return settings.steps
    started = time.perf_counter()
    side.step()
    settle()
    seconds = time.perf_counter() - started
    return max(min_steps, min(1000, math.ceil(settings.target_seconds / max(seconds, 1e-9))))


def _no_wait() -> None:
    """Nothing queued to wait for: the step returned when its work was done."""


def measure(
    ours: Side,
    reference: Side | None,
    settings: Settings,
    best: bool = False,
    min_steps: int = 1,
    settle: Callable[[], None] = _no_wait,
) -> dict[str, Any]:
    """Warm up both sides, then alternate them for ``settings.repeats`` repeats of at least ``min_steps``
    steps (unless ``settings.steps`` fixes them); work per second of each.

    Ours runs first in even repeats and the reference first in odd ones, so a drift in the machine's speed
    (another process, thermal throttling) falls on both alike. ``settle`` runs before each repeat's clock
    stops: a step that returns before all of its work is done (MXNet's train step waits for its loss, not for
    the backward pass and the update queued after it) is charged with that work, not the side timed next.
    """
    sides = [ours] if reference is None else [ours, reference]
    for _ in range(settings.warmup):
        for side in sides:
            side.step()
            settle()
    steps = [_steps_for(side, settings, min_steps, settle) for side in sides]
    samples: list[list[float]] = [[] for _ in sides]
    for repeat in range(settings.repeats):
        order = range(len(sides)) if repeat % 2 == 0 else reversed(range(len(sides)))
        for index in order:
            started = time.perf_counter()
            for _ in range(steps[index]):
                sides[index].step()
            settle()
            samples[index].append(sides[index].work * steps[index] / (time.perf_counter() - started))
    result = [stats(s, n) for s, n in zip(samples, steps)]
    if best:
        for side_stats in result:
            side_stats["best"] = max(side_stats["samples"])
    return {"ours": result[0], "reference": result[1] if reference is not None else None}


def _import_seconds(statement: str) -> float:
    """Seconds a fresh Python process spends in ``statement`` (interpreter start-up not included)."""
    code = f"import time\nstarted = time.perf_counter()\n{statement}\nprint(time.perf_counter() - started)"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
    # Run outside any source tree: `python -c` puts its working directory first on the path, and a checkout's
    # resnet/ there would hide the installed package.
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600, cwd=tempfile.gettempdir()
    )
    if done.returncode:
        raise RuntimeError(f"{statement!r} failed in a fresh process:\n{done.stderr.strip()[-2000:]}")
    return float(done.stdout.strip().splitlines()[-1])


def measure_imports(ours: str, reference: str | None, repeats: int) -> dict[str, Any]:
    """Alternate fresh-process imports of ``ours`` and ``reference``; seconds (lower is better)."""
    statements = [ours] if reference is None else [ours, reference]
    samples: list[list[float]] = [[] for _ in statements]
    for repeat in range(repeats):
        order = range(len(statements)) if repeat % 2 == 0 else reversed(range(len(statements)))
        for index in order:
            samples[index].append(_import_seconds(statements[index]))
    result = [stats(s, 1) for s in samples]
    return {"ours": result[0], "reference": result[1] if reference is not None else None}
