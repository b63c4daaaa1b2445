"""Atomic file writes: write to a temporary file beside the target, flush it to disk, then rename.

A crash or an interrupted download therefore never leaves a half-written file under the final name. The file
gets the permissions a plain ``open(path, "w")`` would give it (0644 under the usual umask 022), not the 0600 of
the temporary file it was written as, so that others can read a shared run directory or data cache.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from resnet.faults import fault_point

__all__ = ["atomic_path", "current_umask"]


def current_umask() -> int:
    """The process's umask, read without changing it where Linux shows it (``/proc/self/status``)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere the only way to read it is to set it; set it straight back
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's directory; on success it replaces ``path`` atomically.

    On any exception the temporary file is removed and ``path`` is left as it was.
    """
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    except OSError as error:
        raise OSError(
            f"cannot write {str(target)!r}: its directory {str(directory)!r} is not writable ({error.strerror}). "
            "Choose another path or fix the directory's permissions."
        ) from error
    os.close(handle)
    try:
        yield Path(temporary)
        with open(temporary, "rb+") as written:
            os.fsync(written.fileno())
        os.chmod(temporary, 0o666 & ~current_umask())  # mkstemp creates it 0600 whatever the umask
        fault_point(f"write:{target.name}")  # tests kill the process here: the old file must survive
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
