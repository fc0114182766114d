"""Checks shared by the public functions: each raises :class:`ConfigError` naming the value."""

from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np

from .errors import ConfigError

__all__ = [
    "check_int",
    "check_real",
    "check_choice",
    "check_matrix",
    "check_spectrum",
]


def check_int(name: str, value: object, *, minimum: int | None = None,
              maximum: int | None = None) -> int:
    """Return ``value`` as an int, or raise naming ``name`` if it is not a whole number in range."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ConfigError(f"`{name}` should be a whole number, got {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ConfigError(f"`{name}` should be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"`{name}` should be at most {maximum}, got {value}")
    return value


def check_real(name: str, value: object, *, minimum: float | None = None,
               maximum: float | None = None, strict_minimum: bool = False) -> float:
    """Return ``value`` as a finite float, or raise naming ``name``.

    ``strict_minimum`` makes ``minimum`` exclusive (``lr > 0`` rather than ``lr >= 0``).
    """
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ConfigError(f"`{name}` should be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ConfigError(f"`{name}` should be finite, got {value}")
    if minimum is not None:
        if strict_minimum and value <= minimum:
            raise ConfigError(f"`{name}` should be greater than {minimum:g}, got {value:g}")
        if not strict_minimum and value < minimum:
            raise ConfigError(f"`{name}` should be at least {minimum:g}, got {value:g}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"`{name}` should be at most {maximum:g}, got {value:g}")
    return value


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``choices``, or raise listing them."""
    if value not in choices:
        raise ConfigError(f"`{name}` should be one of {', '.join(choices)}; got {value!r}")
    return str(value)


def check_matrix(name: str, value: object) -> np.ndarray:
    """Return ``value`` as a finite 2-D float array (float32 kept, other types to float64)."""
    arr = np.asarray(value)
    if arr.ndim != 2:
        raise ConfigError(f"`{name}` should be a 2-D matrix, got shape {arr.shape}")
    if arr.dtype.kind not in "fiu" or arr.dtype.kind == "b":
        raise ConfigError(f"`{name}` should hold real numbers, got dtype {arr.dtype}")
    if arr.dtype not in (np.float32, np.float64):
        arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise ConfigError(f"`{name}` contains NaN or infinite values")
    return arr


def check_spectrum(value: object, name: str = "singular_values") -> np.ndarray:
    """Return singular values as a 1-D float64 array, finite, non-negative, sorted descending."""
    s = np.asarray(value, dtype=np.float64) if not isinstance(value, np.ndarray) else value
    if s.ndim != 1:
        raise ConfigError(f"`{name}` should be 1-D, got shape {s.shape}")
    s = s.astype(np.float64, copy=False)
    if not np.all(np.isfinite(s)):
        raise ConfigError(f"`{name}` contains NaN or infinite values")
    if s.size and s.min() < 0:
        raise ConfigError(f"`{name}` should be non-negative, got minimum {s.min():g}")
    if s.size > 1 and np.any(np.diff(s) > 0):
        raise ConfigError(f"`{name}` should be sorted in descending order")
    return s
