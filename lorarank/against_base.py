"""The audit's view against the base model: non-zero inits read right, intruders per module.

:func:`lorarank.audit.audit_adapter` calls these when the adapter's init moved the base or when
base weights and ``intruders=True`` are given; they live here so that the audit's own module
stays about spectra and ranks.

- :func:`prepare`: an adapter whose ``init_lora_weights`` moved the base (PiSSA, OLoRA) is,
  with the original base, replaced by its exact update (PEFT's rank-2r conversion, in float64);
  without it, nothing changes here and :func:`label` marks every moved module's spectrum as
  ``B@A`` as stored, not the update.
- :func:`intruder_fields`: one module's ``intruders`` object and amplification factor.
- :func:`summary_fields`: what the summary says about both.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

from .adapters import Adapter
from .errors import UnsupportedAdapterError
from .inits import InitInfo, convert_adapter, init_of, moved_modules

__all__ = ["prepare", "label", "intruder_fields", "summary_fields", "INIT_REPLAYED"]

#: ``spectrum_of`` of a module whose init was replayed from the base.
INIT_REPLAYED = "update s*(B@A - B0@A0) ({name} init replayed from the base weights, {replay})"


def prepare(adapter: Adapter, base, *, replay: str = "float64") -> tuple[Adapter, InitInfo, bool]:
    """``(adapter to audit, init, replayed)``.

    With base weights and a replayable init, the adapter to audit holds each moved module's
    exact update ``s * [B, -B0] @ [A; A0]`` (float64) and keeps the file's rank and parameter
    count as ``stored_rank`` / ``stored_params``.
    """
    info = init_of(adapter)
    if not info.moves_base or base is None or info.replay is None:
        return adapter, info, False
    converted = convert_adapter(adapter, base, replay=replay, keep_float64=True)
    originals = {m.name: m for m in adapter.modules}
    moved = set(moved_modules(adapter))
    modules = [replace(m, stored_rank=originals[m.name].rank, stored_params=originals[m.name].num_params)
               if m.name in moved else m for m in converted.modules]
    return replace(converted, modules=modules), info, True


def label(reports: Sequence, adapter: Adapter, info: InitInfo, *, replayed: bool, replay: str = "float64") -> list:
    """Reports whose ``spectrum_of`` says what the moved modules' values are."""
    if not info.moves_base:
        return list(reports)
    moved = set(moved_modules(adapter))
    text = (INIT_REPLAYED.format(name=info.name, replay=replay) if replayed else info.label)
    return [replace(r, spectrum_of=text) if r.name in moved else r for r in reports]


def intruder_fields(module, base, *, cache, top_k: int, epsilon: float) -> dict:
    """``{"intruders": {...}, "amplification": x}`` for one module (``{"error": ...}`` when the
    definition does not apply to it)."""
    from .intruders import module_against_base

    try:
        analysis = module_against_base(module, base, cache=cache, top_k=top_k, epsilon=epsilon)
    except UnsupportedAdapterError as exc:
        return {"intruders": {"top_k": top_k, "epsilon": epsilon, "count": None, "error": f"not computed for {exc}"},
                "amplification": None}
    return {"intruders": analysis.intruders.to_dict(), "amplification": analysis.amplification}


def summary_fields(reports: Sequence, info: InitInfo, *, replayed: bool, base, adapter: Adapter) -> tuple[dict, list[str]]:
    """``(summary entries, warning sentences)`` about the init and the intruders."""
    out: dict = {"init": {**info.to_dict(), "replayed": replayed}}
    warnings: list[str] = []
    if info.moves_base and not replayed:
        warnings.append(info.sentence)
    out["spectrum_is_update"] = not (info.moves_base and not replayed)
    if replayed and base is not None:
        half = sorted({base.dtype_of(n) for n in moved_modules(adapter)} & {"BF16", "F16"})
        if half:
            warnings.append(f"the base is {', '.join(half)}: PEFT stores the residual W0 - s*B0@A0 rounded to that "
                            "dtype, so the trained model also differs from W0 by that rounding, which the exact "
                            "update shown here does not include")
    with_intr = [r for r in reports if r.intruders is not None]
    if with_intr:
        counted = [r for r in with_intr if r.intruders.get("count") is not None]
        skipped = [r for r in with_intr if r.intruders.get("count") is None]
        first = with_intr[0].intruders
        out["intruders"] = {
            "top_k": first["top_k"], "epsilon": first["epsilon"],
            "modules": len(counted),
            "modules_with_intruders": sum(1 for r in counted if r.intruders["count"]),
            "total": sum(r.intruders["count"] for r in counted),
            "not_computed": len(skipped),
        }
        if skipped:
            warnings.append(f"intruders not computed for {len(skipped)} of {len(with_intr)} modules "
                            f"({skipped[0].intruders['error'][len('not computed for '):]}), e.g. {skipped[0].name}")
    return out, warnings
