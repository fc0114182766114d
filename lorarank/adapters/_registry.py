"""The registry of families and key layouts: what each family is and how its tensors are read.

A family module (``lora.py``, ...) registers

- one :class:`Family`: its name and label, what ``(B, A, scale)`` hold, the phrase saying what
  its reported singular values are of, what a resize writes (the family itself, or plain LoRA
  factors of the same update), and the family's own rules where it has any: its PEFT
  ``peft_type`` and config keys, its scale rule, what the file's r means, the rank a plain LoRA
  needs to hold it, and its modules' sizes from the tensors' shapes alone (screening);
- one :class:`Layout` per naming convention it reads: the key suffix of each role (``"A"``,
  ``"B"``, ...) and a function that turns the tensors of one module into a :class:`LoraModule`
  (scale 1; scales are set afterwards from the file's alpha keys or config).

``adapters/__init__.py`` imports every public module of the package, so a new family is one new
file (plus its tests): nothing else names it.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from typing import Callable, Mapping

from ._model import LoraModule
from ._tensors import Tensors

__all__ = ["Family", "register_family", "families", "family", "peft_family", "Layout", "register", "refuse",
           "classify", "select", "refusal", "layouts"]

#: What a resize writes for a family's modules: the family itself, or plain LoRA factors of the
#: best rank-k approximation of the same update.
RESIZE_KINDS = ("own", "lora")
#: The rank a plain LoRA needs to hold a family's module exactly: its stored rank q, or its
#: spectrum's length (LoKr: ``min(o1, i1) * q``).
LORA_RANKS = ("stored", "spectrum")
#: The r a file states for a family's module: the width q of its factors, or its stored rank.
FILE_RANKS = ("width", "stored")

#: ``dims(fmt, shapes) -> (q, d_out, d_in, lora_rank)`` of one module from its tensors' shapes
#: (``{role: shape}``), or None when they do not chain.
Dims = Callable[[str, Mapping[str, tuple[int, ...]]], "tuple[int, int, int, int] | None"]


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
    lycoris : bool, default=False
        PEFT's port of a LyCORIS family: its tensors are the family's own factors (Kronecker
        halves, Hadamard pairs; no A and B), which PEFT names with LyCORIS's key suffixes
        (``hada_w1_a``, ...; a PEFT config or the PEFT prefix tells the two apart), its config
        names alpha ``alpha`` (not ``lora_alpha``), and its r is LyCORIS's stored dim.
    half_rank : bool, default=False
        Its r is the dim of one factorised half, absent when both halves are full matrices
        (LoKr): LyCORIS then applies scale 1 (it trains them with alpha = dim), and PEFT keeps
        its config's r for the scale, which the module then states as its stored rank.
    dims : callable, optional
        ``dims(fmt, shapes) -> (q, d_out, d_in, lora_rank)`` from the tensors' shapes alone
        (``{role: shape}``), None when they do not chain: what screening a header reads
        (:mod:`lorarank.adapters.headers`). Without it, screening refuses the family by name.
    lora_rank : {"stored", "spectrum"}, default="stored"
        The rank a plain LoRA needs to hold a module exactly (what a server's rank cap must
        allow): its stored rank q, or its spectrum's length (LoKr).
    file_rank : {"width", "stored"}, default="width"
        The r the file states for a module (tables, reports): the width q of its exact factors,
        or its stored rank when there is one (LoHa: a half's r, its factors are r² wide; LoRA: a
        PiSSA / OLoRA module's own r when its exact update, rank 2r, is audited).
    rank_note : str, optional
        What the file's r means when the update can have another rank (LoHa: rank up to r²);
        the audit's reading says it beside the recommended ranks.
    scale_rule : callable, optional
        ``scale_rule(alpha, r, rslora) -> scale`` when the family does not scale by
        ``alpha / r`` (``alpha / sqrt(r)`` with rsLoRA): AdaLoRA's ``alpha / (r + 1e-5)``.
    peft_scales : callable, optional
        ``peft_scales(modules, config, name) -> (modules, note)``: the family's own reading of a
        PEFT config's scale (AdaLoRA: ``init_r``, ``rank_pattern`` holds masks), instead of
        the LoRA one (``r``, ``rank_pattern``, ``alpha_pattern``).
    """

    name: str
    label: str
    description: str
    spectrum: str
    resize: str = "own"
    spectrum_with_base: str | None = None
    peft_type: str | None = None
    lycoris: bool = False
    half_rank: bool = False
    dims: Dims | None = None
    lora_rank: str = "stored"
    file_rank: str = "width"
    rank_note: str | None = None
    scale_rule: Callable[[float, int, bool], float] | None = None
    peft_scales: Callable[[list[LoraModule], dict, str], tuple[list[LoraModule], str]] | None = None

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_KINDS:
            raise ValueError(f"resize should be one of {RESIZE_KINDS}, got {self.resize!r}")
        if self.lora_rank not in LORA_RANKS:
            raise ValueError(f"lora_rank should be one of {LORA_RANKS}, got {self.lora_rank!r}")
        if self.file_rank not in FILE_RANKS:
            raise ValueError(f"file_rank should be one of {FILE_RANKS}, got {self.file_rank!r}")

    def scale(self, alpha: float, r: int, rslora: bool = False) -> float:
        """The scale of a module of rank ``r`` from ``alpha``: the family's rule, else
        ``alpha / r`` (``alpha / sqrt(r)`` with rsLoRA); 0 for rank 0."""
        if self.scale_rule is not None:
            return self.scale_rule(alpha, r, rslora)
        if r == 0:
            return 0.0
        return alpha / math.sqrt(r) if rslora else alpha / r


_FAMILIES: dict[str, Family] = {}


#: Bumped whenever what is registered changes: results derived from the registry and kept
#: (:func:`lorarank.adapters.headers.screen_header`'s memo) carry it in their keys.
_GENERATION = [0]


def generation() -> int:
    """How many times the registry changed (families, layouts, refusals)."""
    return _GENERATION[0]


def changed() -> None:
    """Forget what was derived from the registry (after a change, e.g. a test restoring it)."""
    _GENERATION[0] += 1
    _SUFFIXES.clear()
    _select_by_suffixes.cache_clear()


def register_family(family: Family) -> Family:
    """Add a family (its name must be new)."""
    if family.name in _FAMILIES:
        raise ValueError(f"family {family.name!r} is registered twice")
    _FAMILIES[family.name] = family
    _GENERATION[0] += 1
    return family


def families() -> dict[str, Family]:
    """Every registered family by name, in registration order."""
    return dict(_FAMILIES)


def family(name: str) -> Family:
    """The registered family ``name``; an unknown name gets a neutral entry naming it."""
    return _FAMILIES.get(name) or Family(name, name, f"({name})", f"update ({name})")


def peft_family(peft_type: str) -> Family | None:
    """The first registered family whose PEFT ``peft_type`` is ``peft_type`` (``"LOHA"``), or None."""
    return next((f for f in _FAMILIES.values() if f.peft_type == str(peft_type).upper()), None)


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
    changed()
    return layout


# suffix -> (format, role) of its first registration, built on first use (classify's fast path)
_SUFFIXES: dict[str, tuple] = {}  # "" -> ("", "dotted" or "", most dots in a suffix)


def refuse(pattern: str, kind: str) -> None:
    """Recognise keys matching ``pattern`` as ``kind`` and refuse them (not read yet)."""
    _REFUSED.append((re.compile(pattern), kind))
    _GENERATION[0] += 1


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
        dotted = all(s.startswith(".") for s in _SUFFIXES)
        _SUFFIXES[""] = ("", "dotted" if dotted else "", max((s.count(".") for s in _SUFFIXES), default=0))
    if _SUFFIXES[""][1] == "dotted":
        # only the tails of at most as many components as the longest suffix can match
        tails, at = [], len(key)
        for _ in range(_SUFFIXES[""][2]):
            at = key.rfind(".", 0, at)
            if at < 0:
                break
            tails.append(at)
        for at in reversed(tails):
            hit = _SUFFIXES.get(key[at:])
            if hit is not None:
                return hit[0], key[:at], hit[1]
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
    # A layout names a key when the key is the module's name plus the layout's suffix for that
    # role: the answer depends only on each role's suffix, so it is looked up once per shape of
    # module (an 8B adapter's 224 modules have one or two shapes).
    if not all(key.startswith(name) for key in keys.values()):
        return None
    return _select_by_suffixes(fmt, frozenset((role, key[len(name):]) for role, key in keys.items()))


@functools.lru_cache(maxsize=4096)
def _select_by_suffixes(fmt: str, suffixes: frozenset) -> Layout | None:
    keys = {role: suffix for role, suffix in suffixes}
    fits = [lay for lay in _LAYOUTS if lay.format == fmt and _names_keys(lay, "", keys)
            and set(lay.required) <= set(keys)]
    return max(fits, key=lambda lay: len(lay.required)) if fits else None
