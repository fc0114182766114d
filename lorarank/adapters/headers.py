"""An adapter from its safetensors header alone: modules, families, ranks, shapes, dtypes.

Screening a fleet (``lorarank fleet --screen``) answers the serving-cap question for stored
ranks without reading a single weight: the header of a safetensors file (8 bytes of length,
then a JSON table of names, dtypes, shapes and offsets) says everything needed. On the Hub
that is one or two HTTP range requests of a few kilobytes (:func:`lorarank.hub.read_header`).

The keys are grouped into modules by the same code that reads adapters
(:func:`lorarank.adapters.module_layouts`), so a screened module is exactly a module the full
reader would build; its rank and shape then follow from the tensors' shapes by the family's
rule (the inner dimension ``q`` of the exact factorisation ``dW = s * B @ A``, as
:attr:`LoraModule.rank`; LoHa ``r1 * r2``, a full LoKr half ``min(o2, i2)``). Headers are
bounded before they are parsed (:func:`check_safetensors_header`: size, nesting, tensor count)
and must describe their data exactly (known dtypes, byte counts matching the shapes, offsets
covering the data with no gap and no overlap): a hostile header costs bounded time and memory.

Not known from a header: scales (alphas may sit in the data), AdaLoRA's kept ranks (in
``lora_E``), spectra. Those need the full audit.
"""

from __future__ import annotations

import contextlib
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping

from ..errors import AdapterError
from . import _registry
from ._load import module_layouts
from ._tensors import MAX_HEADER_BYTES, check_safetensors_header, tensor_layout

__all__ = ["HeaderModule", "HeaderAdapter", "parse_header", "screen_entries", "screen_header",
           "header_memo", "DTYPE_NAMES"]

#: safetensors dtype name -> the name the audit reports (numpy's, and ``bfloat16``).
DTYPE_NAMES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}

Entries = Mapping[str, tuple[str, tuple[int, ...]]]


@dataclass(frozen=True)
class HeaderModule:
    """One module as its header describes it.

    Attributes
    ----------
    name : str
    family : str
    rank : int
        The inner dimension ``q`` of ``B @ A`` (:attr:`LoraModule.rank`).
    shape : (int, int)
        ``(d_out, d_in)`` of the update.
    dtype : str
    params : int
        Parameters the file stores for the module.
    lora_rank : int
        The rank a plain LoRA needs to hold the module exactly: ``rank``, except for LoKr
        (``min(o1, i1) * min(q, o2, i2)``, the length of its spectrum).
    """

    name: str
    family: str
    rank: int
    shape: tuple[int, int]
    dtype: str
    params: int
    lora_rank: int = 0


@dataclass(frozen=True)
class HeaderAdapter:
    """What a header says about a whole adapter (see the module docstring)."""

    format: str
    modules: list[HeaderModule]
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def ranks(self) -> list[int]:
        """Distinct ranks, ascending (as :attr:`Adapter.ranks`)."""
        return sorted({m.rank for m in self.modules})

    @property
    def families(self) -> list[str]:
        return list(dict.fromkeys(m.family for m in self.modules))

    @property
    def dtypes(self) -> list[str]:
        return list(dict.fromkeys(m.dtype for m in self.modules))

    @property
    def num_params(self) -> int:
        return sum(m.params for m in self.modules)


def parse_header(source: str, head: bytes, read: Callable[[int], bytes], size: int
                 ) -> tuple[dict[str, tuple[str, tuple[int, ...]]], dict[str, str]]:
    """``(entries, __metadata__)`` of a safetensors header, checked.

    Parameters
    ----------
    source : str
        Names the file in errors.
    head : bytes
        The file's first 8 bytes (the header length).
    read : callable
        ``read(n)`` returns the next ``n`` bytes (the header itself); called at most once,
        with ``n`` <= :data:`lorarank.adapters._tensors.MAX_HEADER_BYTES`.
    size : int
        The whole file's size in bytes.

    Returns
    -------
    entries : dict of str to (str, tuple of int)
        Tensor name -> (safetensors dtype name, shape).
    metadata : dict of str to str

    Raises
    ------
    AdapterError
        Not a safetensors file, a header over the bounds, or one that does not describe the
        file's data exactly.
    """
    if len(head) < 8 or size < 8:
        raise AdapterError(f"{source} is not a valid safetensors file (only {size} bytes)")
    metadata, header = check_safetensors_header(source, head, read, size)
    (length,) = struct.unpack("<Q", head[:8])
    layout = tensor_layout(header, size - 8 - length) if header else None
    if layout is None:
        raise AdapterError(f"{source} is not a valid safetensors file (its header does not describe "
                           "its data exactly)")
    return {k: (dtype, shape) for k, (dtype, shape, _, _) in sorted(layout.items())}, metadata


def _check(cond: bool, source: str, name: str, shapes: dict) -> None:
    if not cond:
        shown = ", ".join(f"{role} {tuple(s)}" for role, s in shapes.items())
        raise AdapterError(f"{source}: the factors of module {name or '(unnamed)'!r} do not chain ({shown})")


def _module_dims(family: str, fmt: str, shapes: dict[str, tuple[int, ...]], source: str,
                 name: str) -> tuple[int, int, int, int]:
    """``(q, d_out, d_in, lora rank)`` of one module from its tensors' shapes, by the rule its
    family registered (:attr:`lorarank.adapters.Family.dims`)."""
    rule = _registry.family(family).dims
    if rule is None:
        raise AdapterError(f"{source}: module {name!r} is of family {family!r}, which screening does not know")
    dims = None if any(len(v) == 0 for v in shapes.values()) else rule(fmt, shapes)
    _check(dims is not None, source, name, shapes)
    return dims


def screen_entries(entries: Entries, *, config: dict | None, source: str,
                   metadata: Mapping[str, str] | None = None) -> HeaderAdapter:
    """The modules of an adapter from its header entries (names, dtypes, shapes) alone.

    Parameters
    ----------
    entries : mapping of str to (str, tuple of int)
        From :func:`parse_header`.
    config : dict or None
        ``adapter_config.json`` as parsed (:func:`lorarank.adapters._config.parse_config`).
    source : str
    metadata : mapping, optional
        The header's ``__metadata__`` (a diffusers file names its PEFT config there).

    Returns
    -------
    HeaderAdapter
        Modules in the order the full reader sorts them.
    """
    fmt, named = _grouping(entries, config, source)
    if fmt == "peft" and config is None and "lora_adapter_metadata" in (metadata or {}):
        fmt = "diffusers"
    modules = []
    for name, roles, layout, first in named:
        shapes = {role: tuple(map(int, entries[key][1])) for role, key in roles.items()}
        q, d_out, d_in, lora_rank = _module_dims(layout.family, layout.format, shapes, source, name)
        dtype = DTYPE_NAMES.get(entries[first][0], entries[first][0])
        params = sum(map(math.prod, shapes.values()))
        modules.append(HeaderModule(name, layout.family, int(q), (int(d_out), int(d_in)), dtype, params,
                                    int(lora_rank)))
    return HeaderAdapter(format=fmt, modules=modules, metadata=dict(metadata or {}))


#: Groupings of tensor names already made (:func:`_grouping`), at most this many, each of at
#: most ``_GROUPING_CHARS`` characters of names.
_GROUPINGS: dict[tuple, tuple[str, list]] = {}
_GROUPINGS_MAX = 32
_GROUPING_CHARS = 256 * 2**10


def _config_key(config: dict | None) -> tuple | None:
    """What of the config the screening reads (its presence and ``peft_type``), as a memo key;
    None when that is not a short string (such a config is screened, never kept)."""
    peft_type = None if config is None else config.get("peft_type")
    if peft_type is None or (isinstance(peft_type, str) and len(peft_type) < 64):
        return (config is None, peft_type)
    return None


def _grouping(entries: Entries, config: dict | None, source: str) -> tuple[str, list]:
    """``(format, [(module, {role: key}, layout, first key)])`` of a header's tensor names, in
    the full reader's module order.

    A pure function of the names and the config's ``peft_type`` (:func:`module_layouts` reads
    nothing else), so a fleet of adapters trained on one base with the same target modules
    groups its names once: the grouping is kept for the last few distinct name sets. Failures
    are never kept (each file gets its own sentence), and only names of a bounded total
    length are (a hostile header cannot fill the memory).
    """
    from .names import natural_key

    keys = tuple(entries)
    config_key = _config_key(config)
    memo = (keys, config_key, _registry.generation())
    got = _GROUPINGS.get(memo) if config_key is not None else None
    if got is not None:
        return got
    fmt, named, _, _ = module_layouts(list(keys), config, source)
    modules = []
    for name in sorted(named, key=natural_key):
        roles, layout = named[name]
        first = roles.get("A") or roles.get("w1a") or roles.get("w1") or next(iter(roles.values()))
        modules.append((name, roles, layout, first))
    got = (fmt, modules)
    if config_key is not None and sum(map(len, keys)) <= _GROUPING_CHARS:
        if len(_GROUPINGS) >= _GROUPINGS_MAX:
            _GROUPINGS.clear()
        _GROUPINGS[memo] = got
    return got


#: Screened headers already seen (:func:`screen_header`), at most this many, each of at most
#: ``_SEEN_BYTES`` bytes of header text.
_SEEN: dict[tuple, HeaderAdapter] = {}
_SEEN_MAX = 64
_SEEN_BYTES = 64 * 2**10
#: Whether :func:`screen_header` uses its memo (:func:`header_memo`).
_MEMO = [True]


@contextlib.contextmanager
def header_memo(*, enabled: bool) -> Iterator[None]:
    """Within the block, :func:`screen_header` answers headers seen before from its memo
    (``enabled``, the default outside any block) or parses and screens every header as new
    (what a fleet whose headers all differ costs, e.g. kohya files with per-run metadata;
    ``benchmarks/bench_fleet.py`` measures both). Process-wide, for benchmarks and tests."""
    saved = _MEMO[0]
    _MEMO[0] = bool(enabled)
    try:
        yield
    finally:
        _MEMO[0] = saved


def screen_header(source: str, head: bytes, read: Callable[[int], bytes], size: int, *,
                  config: dict | None) -> HeaderAdapter:
    """:func:`screen_entries` of :func:`parse_header`: an adapter file screened from its header.

    Parameters are those of :func:`parse_header` (``read`` is called at most once) and
    ``config`` as in :func:`screen_entries`.

    The answer is a pure function of the header's bytes, the file's size and the config's
    ``peft_type`` and presence, so a header seen before (adapters trained with one recipe at
    one rank on one base store byte-identical headers: the same names, shapes, dtypes and
    offsets) is answered from a small memo keyed by those bytes, not parsed again. Only
    headers that parsed and screened without error are kept, at most :data:`_SEEN_MAX` of at
    most 64 KiB each; :func:`screen_entries` then returns an equal :class:`HeaderAdapter`
    (tested).
    """
    config_key = _config_key(config)
    length = struct.unpack("<Q", head[:8])[0] if len(head) >= 8 else -1
    if not _MEMO[0] or not 0 <= length <= min(_SEEN_BYTES, size - 8) or config_key is None:
        entries, meta = parse_header(source, head, read, size)   # not kept: checked and said as always
        return screen_entries(entries, config=config, source=source, metadata=meta)
    text = read(length)
    key = (text, size, config_key, _registry.generation())
    header = _SEEN.get(key)
    if header is None:
        entries, meta = parse_header(source, head, lambda n: text, size)
        header = screen_entries(entries, config=config, source=source, metadata=meta)
        if len(_SEEN) >= _SEEN_MAX:
            _SEEN.clear()
        _SEEN[key] = header
    return header
