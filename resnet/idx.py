"""Reading IDX files (the MNIST / Fashion-MNIST format), gzip-compressed or not, with validation.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of dimensions), one
big-endian uint32 per dimension, then the data. Only unsigned bytes (type 0x08) occur in these sets.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

__all__ = ["IDXError", "read_idx", "write_idx"]

_UBYTE = 0x08


class IDXError(ValueError):
    """A file is not a valid IDX file; the message names the file and the problem."""


def read_idx(path: str | os.PathLike, expected_ndim: int | None = None) -> np.ndarray:
    """Read an IDX file of unsigned bytes into a uint8 array of its declared shape.

    Checks the magic number, the type code, the number of dimensions (when ``expected_ndim`` is given)
    and that the file holds exactly as many bytes as its dimensions declare.
    """
    file = Path(path)
    try:
        content = file.read_bytes()
    except OSError as error:
        raise IDXError(f"{file}: cannot be read ({error.strerror or error})") from error
    try:
        raw = gzip.decompress(content) if file.suffix == ".gz" else content
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:  # cut short; not gzip or a bad CRC; damaged data
        raise IDXError(
            f"{file}: cannot be read as gzip ({error}); the file is corrupt: delete it and download it again"
        ) from error
    if len(raw) < 4:
        raise IDXError(f"{file}: too short ({len(raw)} bytes) to hold an IDX header")
    zero1, zero2, type_code, ndim = raw[:4]
    if zero1 or zero2:
        raise IDXError(f"{file}: bad magic number {raw[:4].hex()} (an IDX file starts with two zero bytes)")
    if type_code != _UBYTE:
        raise IDXError(f"{file}: data type code 0x{type_code:02x}, expected 0x08 (unsigned bytes)")
    if expected_ndim is not None and ndim != expected_ndim:
        raise IDXError(f"{file}: {ndim} dimensions, expected {expected_ndim}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise IDXError(f"{file}: truncated header ({len(raw)} bytes, the dimensions need {header})")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + int(np.prod(shape, dtype=np.int64))
    if len(raw) != expected:
        raise IDXError(
            f"{file}: {len(raw)} bytes, but dimensions {shape} need {expected}; the file is truncated or corrupt, "
            "delete it and download it again"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def write_idx(array: np.ndarray, path: str | os.PathLike) -> None:
    """Write a uint8 array as an IDX file (gzip-compressed if the name ends in .gz); used by the tests."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    data = bytes([0, 0, _UBYTE, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    Path(path).write_bytes(gzip.compress(data) if str(path).endswith(".gz") else data)
