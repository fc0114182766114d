"""The registry of families and key layouts: what each family is and how its tensors are read.

A family module (``lora.py``, ...) registers

- one :class:`Family`: its name and label, what ``(B, A, scale)`` hold, the phrase saying what
  its reported singular values are of, and what a resize writes (the family itself, or plain
  LoRA factors of the same update);
- one :class:`Layout` per naming convention it reads: the key suffix of each role (``"A"``,
  ``"B"``, ...) and a function that turns the tensors of one module into a :class:`LoraModule`
  (scale 1; scales are set afterwards from the file's alpha keys or config).

``adapters/__init__.py`` imports every public module of the package, so a new family is one new
file (plus its tests): nothing else names it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from ._model import LoraModule
from ._tensors import Tensors

__all__ = ["Family", "register_family", "families", "family", "Layout", "register", "refuse",
           "classify", "select", "refusal", "layouts"]

#: What a resize writes for a family's modules: the family itself, or plain LoRA factors of the
#: best rank-k approximation of the same update.
RESIZE_KINDS = ("own", "lora")


@dataclass(frozen=True)
class Family:
    """One module family, as its file registers it.

    Attributes
    ----------
    name : str
        The ``family`` of its modules (``"loha"``).
    label : str
        How people write it (``"LoHa"``).
    description : str
        What ``(B, A, scale)`` hold for it (:data:`lorarank.adapters.FAMILIES`).
    spectrum : str
        What the audit's singular values of its modules are of (``spectrum_of``).
    resize : {"own", "lora"}
        ``"lora"``: a resize writes plain LoRA factors of the same update (the family's own
        factors cannot hold a rank-k cut); ``"own"``: it is written in its own family.
    spectrum_with_base : str, optional
        The phrase when base weights are given, if it differs (DoRA: the exact update).
    peft_type : str, optional
        The ``peft_type`` of a PEFT config whose weights hold this family (``"LOHA"``); None when
        PEFT has no such type.
    """

    name: str
    label: str
    description: str
    spectrum: str
    resize: str = "own"
    spectrum_with_base: str | None = None
    peft_type: str | None = None

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_KINDS:
            raise ValueError(f"resize should be one of {RESIZE_KINDS}, got {self.resize!r}")


_FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    """Add a family (its name must be new)."""
    if family.name in _FAMILIES:
        raise ValueError(f"family {family.name!r} is registered twice")
    _FAMILIES[family.name] = family
    return family


def families() -> dict[str, Family]:
    """Every registered family by name, in registration order."""
    return dict(_FAMILIES)


def family(name: str) -> Family:
    """The registered family ``name``; an unknown name gets a neutral entry naming it."""
    return _FAMILIES.get(name) or Family(name, name, f"({name})", f"update ({name})")


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
    _SUFFIXES.clear()
    return layout


# suffix -> (format, role) of its first registration, built on first use (classify's fast path)
_SUFFIXES: dict[str, tuple[str, str]] = {}


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
    # Fast path: every registered suffix starts with "." so the candidates are the key's tails
    # from each ".", the longest (leftmost) first; a dict lookup each instead of an endswith
    # per suffix (a header of thousands of keys is classified in a millisecond or two).
    if not _SUFFIXES:
        for layout in _LAYOUTS:
            for role, suffix in layout.roles:
                _SUFFIXES.setdefault(suffix, (layout.format, role))
        _SUFFIXES[""] = ("", "dotted" if all(s.startswith(".") for s in _SUFFIXES) else "")
    if _SUFFIXES[""][1] == "dotted":
        at = key.find(".")
        while at >= 0:
            hit = _SUFFIXES.get(key[at:])
            if hit is not None:
                return hit[0], key[:at], hit[1]
            at = key.find(".", at + 1)
        return None
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
