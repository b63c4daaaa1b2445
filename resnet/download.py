"""Downloading files into a cache: checksum-verified and atomic, so a bad or partial file is never kept.

A failed download says why in readable lines: every URL tried with its error on one line, and what to do.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from resnet.atomic import atomic_path

__all__ = ["Attempt", "DownloadError", "corruption", "download", "md5sum", "remove_stale_temporaries", "verified"]

_CHUNK = 1 << 20


@dataclass(frozen=True)
class Attempt:
    """One URL tried for a file, and why it failed.

    Attributes:
        base: the location (base URL) the file was asked from.
        url: the file's full URL.
        error: the error, on one line (``[Errno -2] Name or service not known``, ``HTTP Error 404: Not Found``,
            ``checksum mismatch ...``).
        unreachable: no answer at all from the host (no connection, no name, a timeout), so that asking it for
            other files is not worth the wait; False for an answer that was wrong (404, a corrupt or cut transfer).
    """

    base: str
    url: str
    error: str
    unreachable: bool

    def line(self) -> str:
        """``<url> failed (<error>)``."""
        return f"{self.url} failed ({self.error})"


class DownloadError(OSError):
    """A file could not be fetched from any location, or arrived corrupt.

    ``str(error)`` is the whole readable message; ``headline`` its first line, ``details`` the lines after it
    (one per URL or per file, then what to do), ``attempts`` the URLs tried with their errors, and ``corrupt``
    the paths of the cached files that were there but corrupt (not used, and left as they were).
    """

    def __init__(
        self,
        headline: str,
        details: Sequence[str] = (),
        attempts: Sequence[Attempt] = (),
        corrupt: Sequence[str] = (),
    ) -> None:
        self.headline, self.details, self.attempts = headline, tuple(details), tuple(attempts)
        self.corrupt = tuple(corrupt)
        super().__init__(headline + "".join(f"\n  {line}" for line in self.details))

    def __reduce__(self):  # keep the parts when pickled (a worker process, pytest-xdist)
        return type(self), (self.headline, self.details, self.attempts, self.corrupt)


#: A download's temporary file untouched for this long (seconds) belongs to a killed download: a live one writes
#: a chunk at least every read timeout (60 s), so ten minutes leaves a wide margin and needs no lock.
STALE_AFTER = 600.0


def remove_stale_temporaries(directory: str | os.PathLike, names: Sequence[str]) -> list[str]:
    """Remove the temporary files that killed downloads of ``names`` left in ``directory``; returns them."""
    removed = []
    for name in names:
        for temporary in Path(directory).glob(f".{name}.*.tmp"):
            try:
                if time.time() - temporary.stat().st_mtime > STALE_AFTER:
                    temporary.unlink()
                    removed.append(temporary.name)
            except FileNotFoundError:  # another process took it first
                pass
    return removed


def md5sum(path: str | os.PathLike) -> str:
    """Hex MD5 of a file (the checksum Fashion-MNIST publishes)."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verified(path: str | os.PathLike, md5: str) -> bool:
    """Whether ``path`` is a file with MD5 ``md5``."""
    return Path(path).is_file() and md5sum(path) == md5


def corruption(path: str | os.PathLike, md5: str) -> str | None:
    """How the file at ``path`` differs from the published one: ``"MD5 <its>, published <md5>; <size> bytes"``
    (``"empty: 0 bytes"`` for an empty file); None when there is no file there or it has MD5 ``md5``."""
    file = Path(path)
    if not file.is_file():
        return None
    size = file.stat().st_size
    if size == 0:
        return "empty: 0 bytes"
    actual = md5sum(file)
    return None if actual == md5 else f"MD5 {actual}, published {md5}; {size} bytes"


class _BadFile(ValueError):
    """The server answered, but not with the published file."""


def _fetch(url: str, target: Path, md5: str, timeout: float) -> None:
    """Fetch ``url`` into ``target`` atomically, raising unless all of it arrived with the right checksum."""
    with atomic_path(target) as temporary:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(temporary, "wb") as out:
            declared = response.headers.get("Content-Length")
            received = 0
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                out.write(chunk)
                received += len(chunk)
        if declared is not None and received != int(declared):
            raise _BadFile(f"the transfer stopped after {received} of {declared} bytes")
        actual = md5sum(temporary)
        if actual != md5:
            raise _BadFile(f"checksum mismatch: MD5 {actual}, published {md5}; the file was not kept")


def _describe(error: BaseException, timeout: float) -> tuple[str, bool]:
    """(the error on one line, whether the host gave no answer at all)."""
    if isinstance(error, urllib.error.HTTPError):  # an answer: 404, 403...
        return f"HTTP Error {error.code}: {error.reason}", False
    if isinstance(error, urllib.error.URLError):  # no answer: DNS, refused, unreachable, TLS, timeout
        reason = error.reason
        if isinstance(reason, (TimeoutError, socket.timeout)):
            return f"no answer within {timeout:g} s", True
        return " ".join(str(reason).split()) or type(reason).__name__, True
    if isinstance(error, (TimeoutError, socket.timeout)):
        return f"no answer within {timeout:g} s", True
    if isinstance(error, _BadFile):
        return str(error), False
    text = " ".join(str(error).split())
    return (f"{type(error).__name__}: {text}" if text else type(error).__name__), isinstance(error, ConnectionError)


def download(
    name: str, md5: str, directory: str | os.PathLike, base_urls: Sequence[str], timeout: float = 60.0
) -> Path:
    """Return ``directory/name``, downloading it from the first of ``base_urls`` that serves a file with the
    published MD5. An existing file is kept only if its checksum is right; nothing unverified is left behind.

    Raises DownloadError, with one line per URL tried (URL and error) and what to do, when none serves it; a
    corrupt file already there is named first (its MD5 against the published one) and left as it was.
    """
    target = Path(directory) / name
    if verified(target, md5):
        return target
    found = corruption(target, md5)
    attempts = []
    for base in base_urls:
        url = base.rstrip("/") + "/" + name
        try:
            _fetch(url, target, md5, timeout)
            return target
        except (OSError, http.client.HTTPException, ValueError) as error:  # URLError is an OSError
            attempts.append(Attempt(base, url, *_describe(error, timeout)))
    lines = [attempt.line() for attempt in attempts] or ["no location to download it from was given"]
    advice = f"Copy the file there by hand (published MD5 {md5}), or train on the offline set (--dataset digits)."
    if found:
        lines.insert(0, f"the file already there, {target}, is corrupt ({found}) and was not used")
        advice = (
            f"Delete {target} or copy the right file over it (published MD5 {md5}), or train on the offline "
            "set (--dataset digits)."
        )
    corrupt = (str(target),) if found else ()
    raise DownloadError(f"could not download {name} into {directory}:", [*lines, advice], attempts, corrupt)
