"""Write the golden files under tests/golden/ from the NumPy reference: ``python tests/write_golden.py``
(every case), or ``python tests/write_golden.py basic bottleneck`` (only the cases named).

Each file holds a case's weights, input, output cotangent and labels, and what the reference computes:
the inference and training outputs, the gradients, the running statistics after one training pass and,
for a classifier, the weights after one SGD step. Every backend is held to these same numbers.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

sys.path.insert(0, str(Path(__file__).parent))
from helpers import GOLDEN_CASES, GOLDEN_DIR, expected_values  # noqa: E402

from resnet.atomic import atomic_path  # noqa: E402


def main() -> None:
    GOLDEN_DIR.mkdir(exist_ok=True)
    known = [case.name for case in GOLDEN_CASES]
    unknown = set(sys.argv[1:]) - set(known)
    if unknown:
        raise SystemExit(f"unknown cases: {', '.join(sorted(unknown))}; known: {', '.join(known)}")
    for case in GOLDEN_CASES:
        if sys.argv[1:] and case.name not in sys.argv[1:]:
            continue
        arrays = {
            k: np.ascontiguousarray(v, dtype=np.int64 if k == "labels" else np.float32)
            for k, v in expected_values(case).items()
        }
        path = GOLDEN_DIR / f"{case.name}.safetensors"
        with atomic_path(path) as temporary:
            save_file(arrays, str(temporary), metadata={"case": case.name, "spec": repr(case.spec)})
        print(f"wrote {path} ({path.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
