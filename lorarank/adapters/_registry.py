"""The registry of key layouts: how each family's tensors are named and read.

A family module (``lora.py``, ...) registers one :class:`Layout` per naming convention it
reads: the key suffix of each role (``"A"``, ``"B"``, ...) and a function that turns the
tensors of one module into a :class:`LoraModule` (scale 1; scales are set afterwards from the
file's alpha keys or config). A new family is one new module that calls :func:`register`
and is imported in ``adapters/__init__.py``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from ._model import LoraModule
from ._tensors import Tensors

__all__ = ["Layout", "register", "refuse", "classify", "select", "refusal", "layouts"]


@dataclass(frozen=True)
class Layout:
    """One naming convention of one family.

    Attributes
    ----------
    format : str
        The key convention (``"peft"``, ``"kohya"``, ``"diffusers"``, ``"mlx"``, ``"npz"``).
    family : str
        The module family it yields (``"lora"``, ...).
    roles : tuple of (str, str)
        ``(role, key suffix)`` pairs, e.g. ``(("A", ".lora_A.weight"), ("B", ".lora_B.weight"))``.
    required : tuple of str
        Roles every module must have.
    read : callable
        ``read(tensors, name, keys, source) -> LoraModule`` where ``keys`` maps role -> key.
    """

    format: str
    family: str
    roles: tuple[tuple[str, str], ...]
    required: tuple[str, ...]
    read: Callable[[Tensors, str, dict[str, str], str], LoraModule]


_LAYOUTS: list[Layout] = []
_REFUSED: list[tuple[re.Pattern[str], str]] = []


def register(layout: Layout) -> Layout:
    """Add a layout; earlier registrations win when two suffixes match the same key."""
    _LAYOUTS.append(layout)
    return layout


def refuse(pattern: str, kind: str) -> None:
    """Recognise keys matching ``pattern`` as ``kind`` and refuse them (not read yet)."""
    _REFUSED.append((re.compile(pattern), kind))


def layouts() -> tuple[Layout, ...]:
    """Every registered layout, in registration order."""
    return tuple(_LAYOUTS)


def refusal(key: str) -> str | None:
    """The kind of adapter a refused key belongs to, or None."""
    for pattern, kind in _REFUSED:
        if pattern.search(key):
            return kind
    return None


def classify(key: str) -> tuple[str, str, str] | None:
    """``(format, module name, role)`` of a tensor key, or None if no layout claims it.

    The longest matching suffix wins (``.lora_mid.weight`` before a shorter one).
    """
    best: tuple[int, str, str, str] | None = None
    for layout in _LAYOUTS:
        for role, suffix in layout.roles:
            if key.endswith(suffix) and len(key) > len(suffix) - 1 and (best is None or len(suffix) > best[0]):
                best = (len(suffix), layout.format, key[: -len(suffix)], role)
    return None if best is None else best[1:]


def _names_keys(layout: Layout, name: str, keys: dict[str, str]) -> bool:
    suffixes = dict(layout.roles)
    return all(role in suffixes and key == name + suffixes[role] for role, key in keys.items())


def select(fmt: str, name: str, keys: dict[str, str]) -> Layout | None:
    """The layout of ``fmt`` that reads module ``name`` with exactly these ``{role: key}``.

    Among layouts whose suffixes name every key and whose required roles are all present, the
    one with the most required roles wins (LoRA + magnitude is DoRA, not LoRA).
    """
    fits = [lay for lay in _LAYOUTS if lay.format == fmt and _names_keys(lay, name, keys)
            and set(lay.required) <= set(keys)]
    return max(fits, key=lambda lay: len(lay.required)) if fits else None
