"""One run per run directory: an OS file lock held for the whole run, with the holder written beside it.

The lock is ``filelock``'s (fcntl's ``flock`` on Linux and macOS, ``LockFileEx`` on Windows): the operating
system releases it when the holding process ends, however it ends, so a lock left by a killed run is
never in the way; the next run notices the dead holder's record and says it took over. A second run into
a directory whose run is alive fails at once with ``RunInUseError``, naming that run's process id, host
and start time.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from resnet.atomic import atomic_path

__all__ = ["LOCK", "OWNER", "RunInUseError", "RunLock"]

LOCK = ".run.lock"
OWNER = ".run.owner.json"


class RunInUseError(RuntimeError):
    """Another live run holds the directory's lock."""


def _describe(owner: dict[str, Any]) -> str:
    started = owner.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) else "?"
    return f"process {owner.get('pid', '?')} on {owner.get('host', '?')}, started {when}: {owner.get('command', '?')}"


def _read_owner(directory: Path) -> dict[str, Any]:
    try:
        value = json.loads((directory / OWNER).read_text())
        return value if isinstance(value, dict) else {}
    except (OSError, ValueError):
        return {}


def _acquire(directory: Path) -> Any:
    """``directory``'s lock, held; RunInUseError at once, naming the holder, when a live run holds it."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(directory / LOCK), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise RunInUseError(
            f"{directory} is in use by another run ({_describe(_read_owner(directory))}). Wait for it to finish "
            "(or stop it), or give this run another --out directory"
        ) from None
    return lock


class RunLock:
    """``with RunLock(directory):`` holds ``directory``'s run lock (creating the directory), or raises
    RunInUseError at once when a live run holds it. ``took_over`` describes a dead run's stale record."""

    def __init__(self, directory: str | os.PathLike, command: str = "", log: Callable[[str], None] = print):
        self.directory = Path(directory)
        self.command = command
        self.log = log
        self.took_over = ""
        self._lock: Any = None

    def __enter__(self) -> RunLock:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = _acquire(self.directory)
        stale = _read_owner(self.directory)
        if stale:
            self.took_over = _describe(stale)
            self.log(f"{self.directory}: taking over from a run that stopped without releasing it ({self.took_over})")
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "command": self.command}
        with atomic_path(self.directory / OWNER) as temporary:
            temporary.write_text(json.dumps(owner) + "\n")
        return self

    @staticmethod
    def check_free(directory: str | os.PathLike) -> None:
        """RunInUseError now if a live run holds ``directory``'s lock (taken and given back at once
        otherwise): a second run is refused before it loads anything."""
        if (Path(directory) / LOCK).is_file():
            _acquire(Path(directory)).release()

    def __exit__(self, *exc_info: object) -> None:
        try:
            (self.directory / OWNER).unlink(missing_ok=True)
        finally:
            self._lock.release()
            self._lock = None
