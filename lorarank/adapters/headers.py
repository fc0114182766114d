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

import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from ..bounded import regular_file
from ..errors import AdapterError
from . import _registry
from ._load import module_layouts
from ._tensors import check_safetensors_header, tensor_layout

__all__ = ["HeaderModule", "HeaderAdapter", "parse_header", "header_entries_from_path",
           "screen_entries", "DTYPE_NAMES"]

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


def header_entries_from_path(path: str | Path):
    """:func:`parse_header` of a local file: two small reads, no tensor data."""
    path = regular_file(path, what="adapter weights")  # a FIFO would block open()
    size = path.stat().st_size
    with open(path, "rb") as fh:
        return parse_header(path.name, fh.read(8), fh.read, size)


def _prod(dims) -> int:
    return int(math.prod(map(int, dims)))


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
    from .names import natural_key

    keys = list(entries)
    fmt, named, _, _ = module_layouts(keys, config, source)
    if fmt == "peft" and config is None and "lora_adapter_metadata" in (metadata or {}):
        fmt = "diffusers"
    modules = []
    for name, (roles, layout) in named.items():
        shapes = {role: tuple(map(int, entries[key][1])) for role, key in roles.items()}
        q, d_out, d_in, lora_rank = _module_dims(layout.family, layout.format, shapes, source, name)
        first = roles.get("A") or roles.get("w1a") or roles.get("w1") or next(iter(roles.values()))
        dtype = DTYPE_NAMES.get(entries[first][0], entries[first][0])
        params = sum(_prod(entries[key][1]) for key in roles.values())
        modules.append(HeaderModule(name, layout.family, int(q), (int(d_out), int(d_in)), dtype, params,
                                    int(lora_rank)))
    modules.sort(key=lambda m: natural_key(m.name))
    return HeaderAdapter(format=fmt, modules=modules, metadata=dict(metadata or {}))
