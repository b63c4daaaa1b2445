"""Files the package writes (weights, checkpoints, run records, the data cache): atomic, and readable as the
umask allows, like any file a program creates."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from resnet.atomic import atomic_path, current_umask
from resnet.weights import read_weights, write_weights


@pytest.fixture
def umask():
    """Set the process's umask for one test and restore it after."""
    previous = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(previous)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_take_the_umask(tmp_path, umask, mask, mode):
    umask(mask)
    assert current_umask() == mask
    path = tmp_path / "w.safetensors"
    write_weights({"conv1.weight": np.ones((2, 1, 3, 3), np.float32)}, path, {})
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert read_weights(path)[0]["conv1.weight"].shape == (2, 1, 3, 3)


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "metrics.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="interrupted"):
        with atomic_path(target) as temporary:
            temporary.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv"]
