"""The rank-cap planner, and the copies a cap asks for: shrunk to it, padded to one rank.

A server that hot-swaps LoRA adapters preallocates them at one rank: vLLM's
``max_lora_rank``, LoRAX and TGI likewise. An adapter whose rank is above the cap does not
load; one below it wastes nothing but a cap set too high wastes memory for every adapter. For a
cap c, :func:`plan_caps` says which adapters fit as they are (every module's rank q <= c),
what each of the others keeps if every module is cut to its best rank-c approximation (its
``energy_curve``: the share of the whole update's sum sigma^2 in the top c directions of each
module, by Eckart-Young the most any rank-c adapter keeps), and the smallest cap at which a
share p of the fleet keeps at least t of its energy.

:func:`shrink_to_cap` makes those copies with the existing resize
(:func:`lorarank.resize.resize_adapter`, rank ``min(c, q)`` per module: plain LoRA of the best
rank-c approximation), and :func:`pad_adapter` pads every module to one rank R exactly: zero
rows appended to A and zero columns to B, the scale unchanged (the PEFT config's alpha is
chosen so that ``lora_alpha / R`` is the module's scale bit for bit), so ``s * B @ A`` is the
same matrix, as diffusers' hot-swap does (``prepare_model_for_compiled_hotswap``).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .._validate import check_int, check_real
from ..bounded import write_atomic
from ..errors import ConfigError

__all__ = ["Plan", "plan_caps", "energy_at", "pad_adapter", "shrink_to_cap", "cap_files",
           "DEFAULT_KEEP", "DEFAULT_SHARE", "slug", "apply_caps", "load_member"]

#: Default energy share t an adapter must keep, and share p of the fleet that must keep it.
DEFAULT_KEEP = 0.99
DEFAULT_SHARE = 0.9


def energy_at(row: dict, cap: int) -> float | None:
    """Share of ``row``'s energy kept at ``cap`` (1.0 when it fits; None when screened)."""
    if row.get("max_rank") is not None and cap >= row["max_rank"]:
        return 1.0
    curve = row.get("energy_curve") or []
    if not curve:
        return None
    return float(curve[min(cap, len(curve)) - 1])


@dataclass(frozen=True)
class Plan:
    """What a serving cap means for a fleet (``fleet --json``'s ``plan``).

    Attributes
    ----------
    cap : int or None
        The cap asked about (``--cap``).
    fit : list of str
        Adapters whose every module's rank is at most ``cap``: they load as they are.
    shrink : list of dict
        The others: ``{"source", "max_rank", "energy_kept"}`` (share of sum sigma^2 kept when cut
        to the cap; None for screened rows).
    energy_kept_min : float or None
        The least any of them keeps.
    smallest_cap : int or None
        The smallest cap at which at least ``share`` of the adapters keep at least ``keep`` of
        their energy (audited rows); with screened rows, the smallest at which ``share`` of
        them fit as they are.
    smallest_listed_cap : int or None
        The same among the caps the rows report (8, 16, 32, 64, 128): servers take these.
    keep, share : float
    counted : int
        Adapters the plan counts (ok rows).
    screened : bool
        True when the rows have no spectra (the energy numbers are then None).
    """

    cap: int | None
    fit: list[str]
    shrink: list[dict]
    energy_kept_min: float | None
    smallest_cap: int | None
    smallest_listed_cap: int | None
    keep: float
    share: float
    counted: int
    screened: bool

    def to_dict(self) -> dict[str, Any]:
        return {"cap": self.cap, "fit": list(self.fit), "shrink": [dict(s) for s in self.shrink],
                "energy_kept_min": self.energy_kept_min, "smallest_cap": self.smallest_cap,
                "smallest_listed_cap": self.smallest_listed_cap, "keep": self.keep,
                "share": self.share, "counted": self.counted, "screened": self.screened}

    def sentence(self) -> str:
        """The planner's answer in one sentence."""
        n = self.counted
        if n == 0:
            return "No adapter of the fleet could be read, so there is nothing to plan."
        what = (f"fit as they are" if self.screened else f"keep at least {100 * self.keep:g} % of "
                "their energy")
        smallest = (f"the smallest cap at which {100 * self.share:g} % of the {n} adapters {what} "
                    f"is {self.smallest_cap}"
                    + (f" ({self.smallest_listed_cap} among the usual caps)"
                       if self.smallest_listed_cap not in (None, self.smallest_cap) else ""))
        if self.cap is None:
            return smallest[0].upper() + smallest[1:] + "."
        head = f"At cap {self.cap}, {len(self.fit)} of {n} adapters fit as they are"
        if not self.shrink:
            return head + f"; {smallest}."
        worst = ("" if self.energy_kept_min is None else
                 f" (the worst keeps {100 * self.energy_kept_min:.2f} % of its energy)")
        return f"{head} and {len(self.shrink)} must be shrunk{worst}; {smallest}."


def plan_caps(rows: Sequence[dict], *, cap: int | None = None, keep: float = DEFAULT_KEEP,
              share: float = DEFAULT_SHARE, caps: Sequence[int] = (8, 16, 32, 64, 128)) -> Plan:
    """Which adapters fit a serving cap, what shrinking the others keeps, and the smallest cap.

    Parameters
    ----------
    rows : sequence of dict
        Fleet rows (:func:`lorarank.fleet.rows.audit_member`); failed rows are not counted.
    cap : int, optional
        The serving cap asked about.
    keep : float, default=DEFAULT_KEEP
        Energy share t an adapter must keep (0 < t <= 1).
    share : float, default=DEFAULT_SHARE
        Share p of the fleet that must keep it (0 < p <= 1).
    caps : sequence of int
        The usual caps, for ``smallest_listed_cap``.

    Returns
    -------
    Plan
    """
    if cap is not None:
        cap = check_int("cap", cap, minimum=1)
    keep = check_real("keep", keep, minimum=0.0, maximum=1.0, strict_minimum=True)
    share = check_real("share", share, minimum=0.0, maximum=1.0, strict_minimum=True)
    ok = [r for r in rows if r.get("ok")]
    screened = any(r.get("screened") for r in ok)
    fit, shrink = [], []
    if cap is not None:
        for r in ok:
            if r["max_rank"] is None or r["max_rank"] <= cap:
                fit.append(r["source"])
            else:
                e = None if screened else energy_at(r, cap)
                shrink.append({"source": r["source"], "max_rank": r["max_rank"], "energy_kept": e})
    kept = [s["energy_kept"] for s in shrink if s["energy_kept"] is not None]
    need = math.ceil(share * len(ok) - 1e-9) if ok else 0

    def enough(c: int) -> bool:
        if screened:
            good = sum(1 for r in ok if r["max_rank"] is None or r["max_rank"] <= c)
        else:
            good = sum(1 for r in ok if (energy_at(r, c) or 0.0) >= keep - 1e-12)
        return good >= need

    top = max((r["max_rank"] or 1 for r in ok), default=1)
    smallest = next((c for c in range(1, top + 1) if enough(c)), None) if ok else None
    listed = next((c for c in sorted(caps) if enough(c)), None) if ok else None
    return Plan(cap=cap, fit=fit, shrink=shrink, energy_kept_min=min(kept) if kept else None,
                smallest_cap=smallest, smallest_listed_cap=listed, keep=keep, share=share,
                counted=len(ok), screened=screened)


# ------------------------------------------------------------------------------ the copies
def shrink_to_cap(adapter, cap: int):
    """The adapter with every module at rank ``min(cap, q)``: the existing resize
    (:func:`lorarank.resize.resize_adapter`), whose modules are the best rank-``cap``
    approximations (plain LoRA for the other families); unchanged when everything fits."""
    from ..resize import resize_adapter

    cap = check_int("cap", cap, minimum=1)
    return resize_adapter(adapter, rank=cap)


def pad_adapter(adapter, rank: int):
    """Every module padded to ``rank`` with zeros: the update unchanged bit for bit.

    ``A`` gains ``rank - q`` zero rows and ``B`` as many zero columns (in the stored dtype);
    scale, alpha semantics and every other tensor are kept, so ``s * B_pad @ A_pad`` is
    ``s * B @ A`` exactly (each added product is an exact zero).

    Raises
    ------
    ConfigError
        A module above ``rank`` (shrink it first), or a family a plain LoRA pair cannot hold
        (LoKr's Kronecker factor, DoRA's magnitudes: resize converts the first; DoRA is not
        written).
    """
    rank = check_int("rank", rank, minimum=1)
    modules = []
    for m in adapter.modules:
        if m.rank > rank:
            raise ConfigError(f"module {m.name!r} has rank {m.rank}, above --pad-to {rank}; give --cap "
                              f"{rank} (or lower) so that it is shrunk first")
        if m.kron_left is not None or m.magnitude is not None or m.family not in ("lora",):
            raise ConfigError(f"module {m.name!r} is {m.family}, which padding cannot hold as it is; "
                              "give --cap so that it is converted to plain LoRA first")
        if m.rank == rank:
            modules.append(m)
            continue
        a = np.asarray(m.A)
        b = np.asarray(m.B)
        extra = rank - m.rank
        a_pad = np.concatenate([a, np.zeros((extra, a.shape[1]), dtype=a.dtype)], axis=0)
        b_pad = np.concatenate([b, np.zeros((b.shape[0], extra), dtype=b.dtype)], axis=1)
        alpha = None if m.alpha is None else m.scale * rank   # the writer picks the exact alpha
        modules.append(replace(m, A=a_pad, B=b_pad, alpha=alpha))
    return replace(adapter, modules=modules)


def slug(source: str) -> str:
    """A folder name for one adapter's copy: ``runs/a`` -> ``runs__a``."""
    text = source[len("hf://"):] if source.startswith("hf://") else source
    text = re.sub(r"[^A-Za-z0-9_.\-]+", "__", text.replace("/", "__")).strip("._") or "adapter"
    return text[:120]


def cap_files(adapter, *, cap: int | None, pad_to: int | None) -> tuple[dict[str, bytes], dict]:
    """The files of one adapter's copy: shrunk to ``cap`` (when above it or not plain LoRA),
    then padded to ``pad_to``; and a summary ``{"changed", "retained_energy", "ranks"}``.

    Returns
    -------
    files : dict of str to bytes
        As :func:`lorarank.adapters.adapter_files` writes them (PEFT: a config and weights).
    summary : dict
    """
    from ..adapters import adapter_files

    if cap is None and pad_to is None:
        raise ConfigError("give --cap N (shrink) and/or --pad-to R (pad) for --apply")
    if pad_to is not None and cap is not None and cap > pad_to:
        raise ConfigError(f"--cap {cap} is above --pad-to {pad_to}: adapters at the cap could not be "
                          "padded down; use a cap at most the padded rank")
    retained = 1.0
    changed = False
    needs_shrink = cap is not None and (max(adapter.ranks, default=0) > cap or
                                        any(m.family != "lora" for m in adapter.modules))
    if needs_shrink:
        result = shrink_to_cap(adapter, cap)
        adapter, retained, changed = result.adapter, result.retained_energy, bool(result.changed)
    if pad_to is not None:
        adapter = pad_adapter(adapter, pad_to)
        changed = True
    files = adapter_files(adapter, format="peft" if adapter.format == "peft" else None)
    return files, {"changed": changed, "retained_energy": retained, "ranks": adapter.ranks}


def apply_caps(members, rows: Sequence[dict], out: str | Path, *, cap: int | None,
               pad_to: int | None, overwrite: bool = False,
               progress: Callable[[int, int], None] | None = None) -> list[dict]:
    """Write each ok member's copy into ``out/<slug>/`` (see :func:`cap_files`).

    Returns one record per member: ``{"source", "folder", "ok", "error", "changed",
    "retained_energy"}``; a member that fails is a record with its error, the others go on.
    """
    from .rows import one_line

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--apply {out} is a file; give a folder")
    out.mkdir(parents=True, exist_ok=True)
    records = []
    used: set[str] = set()
    for i, (member, row) in enumerate(zip(members, rows)):
        name = slug(member.source)
        while name in used:
            name += "_"
        used.add(name)
        folder = out / name
        record = {"source": member.source, "folder": str(folder), "ok": False, "error": None,
                  "changed": False, "retained_energy": None}
        if not row.get("ok"):
            record["error"] = f"not written: {row.get('error')}"
        else:
            try:
                adapter = load_member(member)
                files, summary = cap_files(adapter, cap=cap, pad_to=pad_to)
                folder.mkdir(exist_ok=True)
                for fname, data in files.items():
                    target = folder / fname
                    if os.path.lexists(target) and not overwrite:
                        raise ConfigError(f"{target} already exists; pass --force to replace it")
                    write_atomic(target, data, overwrite=overwrite)  # whole or nothing
                record.update(ok=True, changed=summary["changed"],
                              retained_energy=summary["retained_energy"])
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:  # noqa: BLE001 - one member's failure is its record
                record["error"] = one_line(exc)
        records.append(record)
        if progress is not None:
            progress(i + 1, len(members))
    return records


def load_member(member, *, token: str | None = None, settings=None):
    """The Adapter of a member (a Hub adapter is downloaded into the bounded cache, with
    ``token`` and ``settings`` as in :func:`lorarank.hub.fetch_adapter_files`)."""
    from ..adapters import load_adapter, load_adapter_bytes

    if member.hub:
        from ..hub import load_hub_adapter

        return load_hub_adapter(member.hub, token=token, settings=settings)[0]
    if member.files is not None:
        return load_adapter_bytes(member.files)
    return load_adapter(member.path)
