"""Stopping a run cleanly on Ctrl-C (SIGINT) or SIGTERM: at the next step boundary, never inside a write.

While ``stop_requests()`` is active the first SIGINT or SIGTERM only records the request; the training loop
looks at it between steps and stops there (raising ``TrainingInterrupted``), so the checkpoint, metrics and
curves stay those of the last complete epoch. A second signal aborts at once (the ordinary
KeyboardInterrupt, or exit status 143 for SIGTERM). Outside the main thread, where Python cannot install
signal handlers, the requests are not intercepted and signals behave as usual.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["StopRequest", "TrainingInterrupted", "stop_requests"]

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(KeyboardInterrupt):
    """A run stopped on a signal at a step boundary. ``exit_status`` is the shell's convention (130 for
    SIGINT, 143 for SIGTERM); ``kept_epoch`` is the last complete epoch, whose files ``out_dir`` holds."""

    def __init__(self, signum: int, epoch: int, step: int, kept_epoch: int, out_dir: Path | None) -> None:
        self.signum, self.epoch, self.step, self.kept_epoch, self.out_dir = signum, epoch, step, kept_epoch, out_dir
        super().__init__(self.describe())

    @property
    def exit_status(self) -> int:
        return 128 + self.signum

    def describe(self) -> str:
        """What happened and what was kept, in one sentence."""
        name = signal.Signals(self.signum).name
        where = f"interrupted by {name} in epoch {self.epoch} after {self.step} step{'s' if self.step != 1 else ''}"
        if self.out_dir is None:
            return f"{where}; nothing is kept (no run directory)"
        if self.kept_epoch == 0:
            return f"{where}; no epoch was complete, so {self.out_dir} holds no checkpoint yet"
        return (
            f"{where}; kept: epoch {self.kept_epoch} in {self.out_dir} (last.safetensors, metrics.csv, "
            "curves.png, run.json); the unfinished epoch is trained again on resume"
        )


class StopRequest:
    """The first stop signal received (``signum``), or None while the run may go on."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __bool__(self) -> bool:
        return self.signum is not None


@contextlib.contextmanager
def stop_requests(enabled: bool = True) -> Iterator[StopRequest]:
    """Intercept SIGINT and SIGTERM for the duration (main thread only): the first is recorded in the
    yielded StopRequest, a second aborts. The previous handlers are restored afterwards."""
    request = StopRequest()
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous: dict[int, Any] = {}

    def handle(signum: int, frame: Any) -> None:
        if request.signum is not None:  # the second signal: abort now
            for number, handler in previous.items():
                signal.signal(number, handler)
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            sys.exit(128 + signum)
        request.signum = signum
        print(
            f"\n{signal.Signals(signum).name}: stopping at the end of this step (again to abort at once)",
            file=sys.stderr,
            flush=True,
        )

    for number in SIGNALS:
        previous[number] = signal.signal(number, handle)
    try:
        yield request
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
