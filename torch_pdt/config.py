"""PDT's configuration: every option validated once, here."""

from __future__ import annotations

import numbers
from typing import Any

__all__ = ["SEED_RANGE", "as_int", "as_real", "is_bool"]

SEED_RANGE = (0, 2**64 - 1)
"""Seeds a ``torch.Generator`` takes."""


def is_bool(value: Any) -> bool:
    """Python's and numpy's bools (numpy's is neither a Python bool nor a registered number)."""
    return isinstance(value, bool) or type(value).__name__ == "bool_"


def as_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    """``value`` as a Python int (any integral type but bool) within ``[low, high]``, else a
    ``ValueError`` naming ``name``."""
    if is_bool(value) or not isinstance(value, numbers.Integral) or not low <= value:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be an int in [{low}, {high}], got {value!r}")
    return int(value)


def as_real(name: str, value: Any) -> float:
    """``value`` as a Python float (any real type but bool), else a ``ValueError`` naming ``name``."""
    if is_bool(value) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    try:
        return float(value)
    except OverflowError as e:
        raise ValueError(f"{name} is too large for a float: {value!r}") from e
