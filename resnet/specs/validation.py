"""Argument checks shared by every description: what is wrong, what is accepted."""

from __future__ import annotations

import math
import numbers

__all__ = ["MAX_SIZE", "divisors", "flag", "learning_rate", "positive_int", "positive_number", "stride"]

#: The largest size (channels, classes, depth, kernel...) a description takes: 2**31 - 1, the largest tensor
#: dimension that fits the 32-bit indices of some frameworks' kernels. Larger values are typos or overflows, and
#: some would make the shape arithmetic or a build run for hours before failing.
MAX_SIZE = 2**31 - 1


def positive_int(value: object, what: str) -> int:
    """``value`` as an int; ValueError naming ``what`` unless it is an integer from 1 to ``MAX_SIZE`` (bools,
    floats, inf and NaN refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    if value > MAX_SIZE:
        raise ValueError(f"{what} must be a positive integer of at most {MAX_SIZE} (2**31 - 1), got {value!r}")
    return int(value)


def positive_number(value: object, what: str) -> float:
    """``value`` as a float; ValueError naming ``what`` unless it is a positive, finite number (bools, inf and
    NaN refused)."""
    number = _finite(value)
    if number is None or number <= 0:
        raise ValueError(f"{what} must be a positive, finite number, got {value!r}")
    return number


def _finite(value: object) -> float | None:
    """``value`` as a finite float, or None: not a real number (bools count as none), inf, NaN, or an integer
    too large for a float (which ``math.isfinite`` would raise OverflowError on)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def stride(value: object) -> int:
    """Accept an int or the book's JAX spelling ``(s, s)``; strides must be 1 or 2 in these blocks."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2 or value[0] != value[1]:
            raise ValueError(f"strides must be an int or a pair of equal ints such as (2, 2), got {value!r}")
        value = value[0]
    step = positive_int(value, "strides")
    if step not in (1, 2):
        raise ValueError(f"strides must be 1 or 2 (the only strides a ResNet block uses), got {step}")
    return step


def flag(value: object, what: str) -> bool:
    """``value`` as a bool; ValueError naming ``what`` unless it is True, False, 0 or 1."""
    if not isinstance(value, (bool, int)) or value not in (0, 1):
        raise ValueError(f"{what} must be True or False, got {value!r}")
    return bool(value)


def divisors(n: int) -> list[int]:
    """The positive divisors of ``n``, ascending."""
    # Up to the square root only, so that an error message for a large n does not wait for n steps.
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return small + [n // d for d in reversed(small) if d * d != n]


def learning_rate(value: object) -> float:
    """``value`` as a float; ValueError unless it is a positive, finite number (bools refused)."""
    number = _finite(value)
    if number is None or number <= 0:
        raise ValueError(
            f"lr must be a positive, finite number (the SGD learning rate, e.g. the book's default 0.1 or the "
            f"chapter's recipe's 0.01), got {value!r}"
        )
    return number
