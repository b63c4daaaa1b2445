"""Argument checks shared by every description: what is wrong, what is accepted."""

from __future__ import annotations

import math
import numbers

__all__ = ["divisors", "flag", "learning_rate", "positive_int", "stride"]


def positive_int(value: object, what: str) -> int:
    """``value`` as an int; ValueError naming ``what`` unless it is a positive integer (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


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
    return [d for d in range(1, n + 1) if n % d == 0]



def learning_rate(value: object) -> float:
    """``value`` as a float; ValueError unless it is a positive, finite number (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(
            f"lr must be a positive, finite number (the SGD learning rate, e.g. the book's default 0.1 or the "
            f"chapter's recipe's 0.01), got {value!r}"
        )
    return float(value)
