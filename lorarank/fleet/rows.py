"""One fleet row per adapter: the pure per-adapter function every executor runs.

:func:`audit_member` takes a :class:`~lorarank.fleet.sources.Member` and the
:class:`FleetOptions` and returns a plain dict (JSON-friendly, picklable, small): the same
numbers as the single-adapter audit of the same files (:func:`lorarank.audit.audit_adapter`,
``lorarank audit --json``'s ``summary``), plus the energy the adapter keeps under serving caps.
It never raises: an adapter that cannot be read or audited is a row with ``ok: false`` and
its one-line ``error``, so a fleet never stops for one bad member. It holds one adapter at a
time, so a worker's memory is that of one audit.

Row fields (``fleet --json``'s ``adapters``):

====================  =====================================================================
``source``            the member as named (path, ``hf://owner/name[/sub]``, upload name)
``revision``          the Hub commit read (None for local files)
``ok``, ``error``     whether it was audited; the one-line error when not
``format``            ``peft``, ``kohya``, ``diffusers``, ``mlx``, ``npz``, ``gguf``
``family``            the module families, joined by ``+`` (``lora``, ``dora+lora``, ...)
``base_model``        ``base_model_name_or_path`` of the config (or the file's metadata)
``stored_ranks``      distinct ranks q of the modules (the audit's ``summary.ranks``)
``max_rank``          the rank a plain LoRA needs to hold its largest module exactly: what a
                      server's ``max_lora_rank`` must allow (the stored rank, except LoKr:
                      the Kronecker product's rank, up to ``min(o1, i1) * q``)
``recommended_rank``  ``{"min", "median", "max"}`` under the rule (the audit's summary)
``energy_at_cap``     ``{"8": e, ...}``: share of the whole update's energy sum sigma^2
                      kept when every module is cut to ``min(cap, q)`` directions (1.0 when
                      it fits); null when screened
``energy_curve``      the same for every cap 1..max_rank (``energy_curve[c-1]``)
``modules``           module count
``params``            parameters stored in the factors
``bytes``             bytes of the adapter's files (weights and config)
``dtypes``            stored dtypes
``warnings``          the audit's warnings (sentences)
``screened``          True when the row comes from headers alone (no spectra)
====================  =====================================================================
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._validate import check_int
from ..bounded import MAX_JSON_BYTES, open_regular, read_exact, read_file, regular_file
from ..errors import ConfigError
from .sources import WEIGHT_SUFFIXES, Member

__all__ = ["DEFAULT_CAPS", "MAX_CAP", "FleetOptions", "audit_member", "audit_members", "row_from_report",
           "error_row", "energy_curve", "ROW_VERSION", "one_line", "local_files", "lora_rank"]

#: Serving caps the rows report by default (vLLM ``max_lora_rank`` choices).
DEFAULT_CAPS: tuple[int, ...] = (8, 16, 32, 64, 128)
#: Largest cap accepted.
MAX_CAP = 65_536
#: Bumped when the row's fields or their meaning change (cached rows of another version are
#: recomputed).
ROW_VERSION = 1
#: Longest ``energy_curve`` a row carries (caps beyond it keep everything a row this long keeps).
MAX_CURVE = 4096


@dataclass(frozen=True)
class FleetOptions:
    """What every row is computed with.

    Attributes
    ----------
    rule, value : str, float
        The rank rule of the audit (:data:`lorarank.spectrum.RANK_RULES`), default energy 0.99.
    caps : tuple of int
        Serving caps for ``energy_at_cap``.
    screen : bool
        Headers only: ranks, shapes and dtypes, no spectra.
    """

    rule: str = "energy"
    value: float = 0.99
    caps: tuple[int, ...] = DEFAULT_CAPS
    screen: bool = False

    def __post_init__(self) -> None:
        from ..spectrum import recommend_rank

        recommend_rank(np.ones(1), rule=self.rule, value=self.value)   # names a bad rule or value
        caps = tuple(check_int("cap", c, minimum=1, maximum=MAX_CAP) for c in self.caps)
        if not caps:
            raise ConfigError("`caps` should list at least one serving cap, e.g. 8,16,32,64,128")
        object.__setattr__(self, "caps", tuple(sorted(set(caps))))
        object.__setattr__(self, "value", float(self.value))

    def key(self) -> str:
        """What a cached row depends on besides the files."""
        return (f"v{ROW_VERSION}|{self.rule}|{self.value!r}|{','.join(map(str, self.caps))}|"
                f"{'screen' if self.screen else 'audit'}")


def one_line(exc: BaseException) -> str:
    """An exception as one line (the first of its message), named when it is not ours."""
    from ..errors import LoraRankError

    text = " ".join(str(exc).split()) if str(exc).strip() else ""
    if isinstance(exc, FileNotFoundError):
        return f"no such file or folder: {exc.filename}"
    if isinstance(exc, PermissionError):
        return f"permission denied: {exc.filename}"
    if isinstance(exc, MemoryError):
        return "out of memory while reading or auditing this adapter"
    if isinstance(exc, LoraRankError) and text:
        return text[:500]
    return f"{type(exc).__name__}: {text}"[:500] if text else type(exc).__name__


def error_row(member: Member, message: str, *, revision: str | None = None) -> dict[str, Any]:
    """The row of a member that could not be audited."""
    return {"source": member.source, "revision": revision, "ok": False, "error": message,
            "format": None, "family": None, "base_model": None, "stored_ranks": [], "max_rank": None,
            "recommended_rank": {}, "energy_at_cap": {}, "energy_curve": [], "modules": 0, "params": 0,
            "bytes": None, "dtypes": [], "warnings": [], "screened": False}


def energy_curve(spectra, *, length: int | None = None) -> list[float]:
    """Share of ``sum sigma^2`` over all modules kept when every module keeps its top ``c``.

    Parameters
    ----------
    spectra : sequence of ndarray of shape (q_i,)
        Each module's singular values, descending.
    length : int, optional
        Caps 1..length (default: the longest spectrum, at most :data:`MAX_CURVE`).

    Returns
    -------
    list of float
        ``out[c - 1]``; 1.0 for an all-zero adapter (nothing to lose).

    Notes
    -----
    Energies are taken relative to the largest sigma_1 so that spectra near 1e160 do not
    overflow when squared (as the audit's summary does).
    """
    spectra = [np.asarray(s, dtype=np.float64) for s in spectra]
    longest = max((s.size for s in spectra), default=0)
    n = min(longest if length is None else int(length), MAX_CURVE)
    if n <= 0:
        return []
    peak = max((float(s[0]) for s in spectra if s.size), default=0.0)
    unit = peak if peak > 0 else 1.0
    kept = np.zeros(n)
    total = 0.0
    for s in spectra:
        e = (s / unit) ** 2
        total += float(e.sum())
        c = np.cumsum(e)
        if c.size >= n:
            kept += c[:n]
        else:
            kept += np.concatenate([c, np.full(n - c.size, c[-1] if c.size else 0.0)])
    if total <= 0:
        return [1.0] * n
    return [float(min(k / total, 1.0)) for k in kept]


def lora_rank(family: str, rank: int, spectrum_size: int) -> int:
    """The rank a plain LoRA needs to hold a module exactly, as its family registered it
    (:attr:`lorarank.adapters.Family.lora_rank`): its stored rank q, or its spectrum's length
    (LoKr, whose Kronecker product has rank up to ``min(o1, i1) * q``)."""
    return int(spectrum_size) if _by_spectrum(family) else int(rank)


def _by_spectrum(family: str) -> bool:
    from ..adapters import family as family_info

    return family_info(family).lora_rank == "spectrum"


def _at_caps(curve: list[float], caps, max_rank: int | None) -> dict[str, float]:
    out = {}
    for cap in caps:
        if not curve or (max_rank is not None and cap >= max_rank):
            out[str(cap)] = 1.0
        else:
            out[str(cap)] = curve[min(cap, len(curve)) - 1]
    return out


def _base_model(config: dict | None, metadata: dict | None) -> str | None:
    for source in (config or {}, metadata or {}):
        for key in ("base_model_name_or_path", "model", "ss_sd_model_name", "general.basename"):
            value = source.get(key)
            if isinstance(value, str) and value.strip():
                return value.strip()[:300]
    return None


def row_from_report(report, *, source: str, revision: str | None, size: int | None,
                    config: dict | None, options: FleetOptions) -> dict[str, Any]:
    """The row of an audited adapter: :class:`~lorarank.audit.AuditReport` -> dict."""
    s = report.summary
    ranks = [int(r) for r in s["ranks"]]
    max_rank = max((lora_rank(m.family, m.rank, m.singular_values.size) for m in report.modules),
                   default=None)
    curve = energy_curve([m.singular_values for m in report.modules], length=max_rank)
    return {
        "source": source, "revision": revision, "ok": True, "error": None,
        "format": report.format, "family": "+".join(s.get("families", [])),
        "base_model": _base_model(config, report.detected.get("metadata")),
        "stored_ranks": ranks, "max_rank": max_rank,
        "recommended_rank": dict(s["recommended_rank"]),
        "energy_at_cap": _at_caps(curve, options.caps, max_rank), "energy_curve": curve,
        "modules": int(s["modules"]), "params": int(s["params"]), "bytes": size,
        "dtypes": list(s["dtypes"]), "warnings": list(s["warnings"]), "screened": False,
    }


def _screen_row(header, *, source: str, revision: str | None, size: int | None,
                config: dict | None) -> dict[str, Any]:
    ranks = header.ranks
    return {
        "source": source, "revision": revision, "ok": True, "error": None,
        "format": header.format, "family": "+".join(header.families),
        "base_model": _base_model(config, header.metadata),
        "stored_ranks": ranks, "max_rank": max((m.lora_rank for m in header.modules), default=None),
        "recommended_rank": {}, "energy_at_cap": {}, "energy_curve": [],
        "modules": len(header.modules), "params": header.num_params, "bytes": size,
        "dtypes": header.dtypes, "warnings": [], "screened": True,
    }


# --------------------------------------------------------------------------------- reading
def local_files(path: Path) -> tuple[Path, Path | None]:
    """``(weights, config)`` of a local member, as :func:`lorarank.adapters.load_adapter` picks them."""
    weights, cfg = _local_names(os.fspath(path))
    return Path(weights), Path(cfg) if cfg else None


def _local_names(path: str) -> tuple[str, str | None]:
    """:func:`local_files` on plain strings (the screening's path: no :mod:`pathlib` objects)."""
    try:
        listing = os.scandir(path)   # one listing; DirEntry.is_file needs no stat for most files
    except NotADirectoryError:
        regular_file(path, what="adapter weights")   # a FIFO would block open(): one sentence
        cfg = os.path.join(os.path.dirname(path), "adapter_config.json")
        return path, cfg if os.path.exists(cfg) else None
    weights, has_config = [], False
    with listing as entries:
        for entry in entries:
            name = entry.name
            if name == "adapter_config.json":
                has_config = entry.is_file() or os.path.exists(entry.path)  # as Path.exists: a folder too
            elif (os.path.splitext(name)[1].lower() in WEIGHT_SUFFIXES and entry.is_file()
                  and name != "base_weights.safetensors"):
                weights.append(name)
    weights.sort()
    preferred = [n for n in weights if n in ("adapter_model.safetensors", "adapters.safetensors")]
    weights = preferred or weights
    if len(weights) != 1:
        from ..adapters import load_adapter

        load_adapter(path)   # raises the reader's own sentence (none, or several)
    return os.path.join(path, weights[0]), os.path.join(path, "adapter_config.json") if has_config else None


def _parse_config(name: str, data: bytes) -> dict:
    from ..adapters import parse_config

    return parse_config(name, data)


def _read_config_bytes(path: str | Path) -> bytes:
    """A local ``adapter_config.json``'s bytes, read within the config bound (a 3 GiB file named
    so is one sentence, not 3 GiB of memory)."""
    return read_file(path, max_bytes=MAX_JSON_BYTES, what="adapter configs")


def _read_config(path: Path) -> dict:
    """A local ``adapter_config.json``, parsed (:func:`_read_config_bytes`)."""
    return _parse_config(path.name, _read_config_bytes(path))


def _audit(member: Member, options: FleetOptions, *, token: str | None = None,
           settings=None) -> dict[str, Any]:
    from ..audit import audit_adapter

    if member.hub:
        from ..hub import load_hub_adapter

        adapter, fetched = load_hub_adapter(member.hub, token=token, settings=settings)
        config = _parse_config("adapter_config.json", fetched.config.read_bytes()) if fetched.config else None
        report = audit_adapter(adapter, rule=options.rule, value=options.value)
        return row_from_report(report, source=member.source, revision=fetched.commit,
                               size=fetched.total_bytes, config=config, options=options)
    if member.files is not None:
        from ..adapters import load_adapter_bytes

        adapter = load_adapter_bytes(member.files)
        configs = [b for n, b in member.files if n.lower().endswith(".json")]
        config = _parse_config("adapter_config.json", configs[0]) if configs else None
        size = sum(len(b) for _, b in member.files)
    else:
        from ..adapters import load_adapter

        path = Path(member.path)
        weights, cfg = local_files(path)
        adapter = load_adapter(path)
        config = _read_config(cfg) if cfg else None
        size = weights.stat().st_size + (cfg.stat().st_size if cfg else 0)
    report = audit_adapter(adapter, rule=options.rule, value=options.value)
    return row_from_report(report, source=member.source, revision=None, size=size, config=config,
                           options=options)


def _screen(member: Member, options: FleetOptions, *, token: str | None = None,
            settings=None) -> dict[str, Any]:
    from ..adapters.headers import screen_entries, screen_header

    if member.hub:
        from ..hub import read_adapter_header

        got = read_adapter_header(member.hub, token=token, settings=settings)
        config = _parse_config("adapter_config.json", got.config) if got.config is not None else None
        header = screen_entries(got.entries, config=config, source=got.name, metadata=got.metadata)
        return _screen_row(header, source=member.source, revision=got.commit, size=got.total_bytes,
                           config=config)
    if member.files is not None:
        weights = [(n, b) for n, b in member.files if not n.lower().endswith(".json")]
        configs = [b for n, b in member.files if n.lower().endswith(".json")]
        config = _parse_config("adapter_config.json", configs[0]) if configs else None
        name, data = weights[0]
        size = sum(len(b) for _, b in member.files)
        if not _safetensors_named(name, data[:4]):
            return _screen_by_reading(member, options, size=size, config=config)
        pos = [8]

        def read(n: int) -> bytes:
            chunk = data[pos[0]:pos[0] + n]
            pos[0] += n
            return chunk

        header = screen_header(name, data[:8], read, len(data), config=config)
    else:
        weights, cfg = _local_names(os.fspath(member.path))
        raw = _read_config_bytes(cfg) if cfg else b""
        config = _parse_config("adapter_config.json", raw) if cfg else None
        name = os.path.basename(weights)
        fd, file_size = open_regular(weights, what="adapter weights")   # one open: size, magic, header
        try:
            size = file_size + len(raw)
            first = read_exact(fd, _FIRST_READ)   # the length and, for most adapters, the whole header
            if not _safetensors_named(name, first[:4]):
                return _screen_by_reading(member, options, size=size, config=config)

            def read(n: int) -> bytes:   # the header: what the first read holds, then the file
                held = first[8:8 + n]
                return held if len(held) == n or len(first) < _FIRST_READ else held + read_exact(fd, n - len(held))

            header = screen_header(name, first[:8], read, file_size, config=config)
        finally:
            os.close(fd)
    return _screen_row(header, source=member.source, revision=None, size=size, config=config)


def _safetensors_named(name: str, magic: bytes) -> bool:
    """Whether a weights file is screened from a safetensors header: named so and not a GGUF
    file or a zip (an ``.npz``) under that name (those are read instead)."""
    return name.lower().endswith(".safetensors") and magic != b"GGUF" and magic[:2] != b"PK"


#: Bytes of a weights file the screening reads at once (8 of length and a small header).
_FIRST_READ = 8 * 2**10


def _screen_by_reading(member: Member, options: FleetOptions, *, size: int, config: dict | None) -> dict:
    """npz and GGUF have no safetensors header: read the factors (no spectra)."""
    from ..adapters import load_adapter, load_adapter_bytes

    adapter = load_adapter_bytes(member.files) if member.files is not None else load_adapter(member.path)
    from ..audit import module_spectrum

    ranks = adapter.ranks
    sizes = [lora_rank(m.family, m.rank, module_spectrum(m).size if _by_spectrum(m.family) else m.rank)
             for m in adapter.modules]
    return {
        "source": member.source, "revision": None, "ok": True, "error": None,
        "format": adapter.format, "family": "+".join(adapter.families),
        "base_model": _base_model(config, adapter.metadata), "stored_ranks": ranks,
        "max_rank": max(sizes, default=None), "recommended_rank": {}, "energy_at_cap": {},
        "energy_curve": [], "modules": len(adapter.modules), "params": adapter.num_params,
        "bytes": size, "dtypes": adapter.dtypes, "warnings": [], "screened": True,
    }


def audit_member(member: Member, options: FleetOptions, *, token: str | None = None,
                 settings=None) -> dict[str, Any]:
    """The fleet row of one adapter (see the module docstring); never raises.

    ``token`` and ``settings`` (a :class:`lorarank.hub.HubSettings`) are for a Hub member, as
    in :func:`lorarank.hub.fetch_adapter_files` (default: ``HF_TOKEN`` and the
    ``LORARANK_HF_*`` limits of the environment).

    Pure in the sense that matters for scale-out: it depends only on its arguments and the
    files (or Hub commit) they name, keeps no state, and returns a small plain dict, so any
    executor (local processes, Ray, Dask) gives the same rows.
    """
    row = None
    try:
        row = (_screen if options.screen else _audit)(member, options, token=token,
                                                      settings=settings)   # the audit: one BLAS thread
        return row
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - every failure is a row, never a stopped fleet
        return error_row(member, one_line(exc))
    finally:
        if not options.screen and (row is None or (row.get("bytes") or 0) > _TRIM_BYTES):
            _trim()


def audit_members(members, options: FleetOptions, *, token: str | None = None,
                  settings=None) -> list[dict[str, Any]]:
    """The rows of several members, one after another: one batch, i.e. one task of an executor.

    Parameters
    ----------
    members : sequence of Member
        Audited in this order; each holds the worker's memory alone while it is audited.
    options : FleetOptions

    Returns
    -------
    list of dict
        ``[audit_member(m, options) for m in members]``: a member that cannot be read is its own
        error row, the others' rows are unaffected (the batch never fails for one member).
    """
    return [audit_member(m, options, token=token, settings=settings) for m in members]


#: Adapters above this size give their freed memory back to the system after the audit.
_TRIM_BYTES = 8 * 2**20


def _trim() -> None:
    """Give freed memory back to the system between adapters (glibc keeps it otherwise)."""
    if os.name != "posix":
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


