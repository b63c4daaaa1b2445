"""Downloading files into a cache: checksum-verified and atomic, so a bad or partial file is never kept."""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from pathlib import Path

from resnet.atomic import atomic_path

__all__ = ["DownloadError", "download", "md5sum"]

_CHUNK = 1 << 20


class DownloadError(OSError):
    """A file could not be fetched from any location, or arrived corrupt."""


def md5sum(path: str | os.PathLike) -> str:
    """Hex MD5 of a file (the checksum Fashion-MNIST publishes)."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


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
            raise DownloadError(f"{url}: the transfer stopped after {received} of {declared} bytes")
        actual = md5sum(temporary)
        if actual != md5:
            raise DownloadError(f"{url}: checksum mismatch (MD5 {actual}, published {md5}); the file was not kept")


def download(name: str, md5: str, directory: str | os.PathLike, base_urls: list[str], timeout: float = 60.0) -> Path:
    """Return ``directory/name``, downloading it from the first of ``base_urls`` that serves a file with the
    published MD5. An existing file is kept only if its checksum is right; nothing unverified is left behind."""
    target = Path(directory) / name
    if target.is_file() and md5sum(target) == md5:
        return target
    failures = []
    for base in base_urls:
        url = base.rstrip("/") + "/" + name
        try:
            _fetch(url, target, md5, timeout)
            return target
        except (OSError, http.client.HTTPException, ValueError) as error:  # URLError is an OSError
            failures.append(f"{url}: {error}")
    raise DownloadError(
        f"could not download {name} into {directory}:\n  " + "\n  ".join(failures)
        + f"\nCopy the file there by hand (published MD5 {md5}), or train on the offline set (--dataset digits)."
    )
