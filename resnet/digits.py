"""scikit-learn's bundled 8x8 handwritten digits, the offline data set, read without importing scikit-learn."""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np

__all__ = ["bundled_digits"]


def bundled_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 digits as (images (N, 8, 8) float64 in 0..16, labels (N,) int64), the arrays that
    ``sklearn.datasets.load_digits()`` gives as ``images`` and ``target``.

    They are read from the CSV file inside the installed scikit-learn (64 pixel values and the label a row),
    found without running the package: importing ``sklearn.datasets`` pulls in SciPy, about 1.5 s of every
    ``resnet train`` process that trains on the digits, measured on a 2-core CPU. Where that file is not
    where scikit-learn has kept it, scikit-learn's own loader reads it."""
    spec = importlib.util.find_spec("sklearn")
    bundled = Path(spec.submodule_search_locations[0], "datasets", "data", "digits.csv.gz") if spec else None
    if bundled is None or not bundled.is_file():
        from sklearn.datasets import load_digits

        bunch = load_digits()
        return bunch.images, bunch.target.astype(np.int64)
    with gzip.open(bundled, "rt") as handle:
        table = np.loadtxt(handle, delimiter=",")
    return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
