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

__all__ = ["prepare", "label", "intruder_fields", "summary_fields", "intruder_cost", "INIT_REPLAYED",
           "INTRUDER_COLUMNS", "intruder_rows", "intruder_csv_rows", "map_records", "reading_facts", "reading",
           "report_blocks"]

#: ``spectrum_of`` of a module whose init was replayed from the base.
INIT_REPLAYED = "update s*(B@A - B0@A0) ({name} init replayed from the base weights, {replay})"
#: What each replay is, in the phrase above: float64 is the definition's exact update, which PEFT's
#: own float32 init (torch) differs from by its rounding (up to ~1.3e-6 sigma_1 on real PiSSA files).
REPLAY_WORDS = {
    "float64": "float64: the exact update of the definition; PEFT's own float32 init differs from it "
               "by rounding, about 1e-6 of sigma_1",
    "torch": "torch float32: PEFT's own arithmetic",
}


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
    text = (INIT_REPLAYED.format(name=info.name, replay=REPLAY_WORDS.get(replay, replay)) if replayed
            else info.label)
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
    if replayed:
        # the file's own rank r: the exact update s*[B, -B0] @ [A; A0] has rank up to 2r
        out["ranks"] = sorted({r.stored_rank if r.stored_rank is not None else r.rank for r in reports})
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


def intruder_cost(shapes: Sequence[tuple[int, int, int]], *, cached: bool):
    """The work of :func:`lorarank.audit.audit_adapter` with ``intruders=True`` on modules of the
    given ``(d_out, d_in, r)``.

    Per module: the base's SVD unless ``cached`` (LAPACK ``gesdd`` in float32, about
    ``4 m n q + 8 q^3`` flops at twice the float64 rate: counted as half as many MACs), then a few
    passes over ``W0`` and ``U0`` with ``r`` columns (about ``6 m n r`` MACs) and the core's
    eigenproblem; plus the audit itself (:func:`lorarank.cost.audit_cost`).

    Returns
    -------
    lorarank.cost.WorkEstimate
    """
    from .cost import WorkEstimate, audit_cost

    total = audit_cost(shapes)
    for d_out, d_in, r in shapes:
        m, n, r = int(d_out), int(d_in), int(r)
        q = min(m, n)
        macs = 6.0 * m * n * r + 40.0 * (q + r) * r * 200   # passes, plus ~200 Lanczos products
        if not cached:
            macs += 0.5 * (4.0 * m * n * q + 8.0 * q ** 3)
        total = total + WorkEstimate(macs=macs, calls=400.0, bytes=8 * (m * n + m * q))
    return total


# ----------------------------------------------------------------- tables, reading, report
#: The per-module table of intruders (page, HTML report): column -> definition.
INTRUDER_COLUMNS: dict[str, str] = {
    "module": "Module path without PEFT's base_model.model. prefix.",
    "intruders": "How many of the top-k left singular vectors of W0 + dW have largest |cos| below epsilon with "
                 "every left singular vector of W0 (PEFT's reduce_intruder_dimension).",
    "which": "Which of the top-k directions are intruders (1 = largest singular value of W0 + dW).",
    "smallest max|cos|": "The smallest, over the top-k directions, of the largest |cos| with any direction of W0.",
    "share of W0 + dW": "The intruders' part of ||W0 + dW||_F^2: sum of their sigma^2 over it.",
    "share of dW": "The update's energy along the intruders: ||U_I^T dW||_F^2 / ||dW||_F^2.",
    "amplification": "||dW||_F / ||U_r^T W0 V_r||_F with U_r, V_r the singular vectors of dW (Hu et al. 2021, "
                     "section 7.3): about 1 when the update reweights W0's own directions, large when it "
                     "amplifies directions W0 barely uses.",
    "|dW|/|W0|": "||dW||_F / ||W0||_F: the update's size relative to the base weight.",
}


def _short(name: str) -> str:
    from .documents import short_name

    return short_name(name)


def intruder_rows(report) -> list[dict]:
    """One row per module in :data:`INTRUDER_COLUMNS` order (1-based ``which``)."""
    rows = []
    for m in report.modules:
        t = m.intruders or {}
        computed = t.get("count") is not None
        rows.append({
            "module": _short(m.name),
            "intruders": t.get("count"),
            "which": (", ".join(str(i + 1) for i in t["indices"]) or "-") if computed else t.get("error", "-"),
            "smallest max|cos|": min(t["max_cos"]) if computed and t.get("max_cos") else None,
            "share of W0 + dW": t.get("share") if computed else None,
            "share of dW": t.get("share_of_update") if computed else None,
            "amplification": m.amplification,
            "|dW|/|W0|": m.relative_size,
        })
    return rows


def intruder_csv_rows(report) -> list[dict]:
    """Flat rows for a CSV: PEFT's 0-based indices and every ``max_cos``, space-separated."""
    rows = []
    for m in report.modules:
        t = m.intruders or {}
        rows.append({
            "name": m.name, "layer": m.layer, "module_type": m.module_type, "d_out": m.shape[0], "d_in": m.shape[1],
            "top_k": t.get("top_k"), "epsilon": t.get("epsilon"), "intruders": t.get("count"),
            "indices": " ".join(map(str, t.get("indices", []))),
            "max_cos": " ".join(f"{c:.9g}" for c in t.get("max_cos", [])),
            "share": t.get("share"), "share_of_update": t.get("share_of_update"),
            "amplification": m.amplification, "relative_size": m.relative_size,
            "spectrum_of": m.spectrum_of, "error": t.get("error"),
        })
    return rows


def map_records(report) -> list[dict]:
    """Records of :func:`lorarank.charts.intruder_map_chart` (1-based ``indices``)."""
    out = []
    for m in report.modules:
        t = m.intruders or {}
        out.append({"layer": m.layer, "module_type": m.module_type, "name": _short(m.name),
                    "count": t.get("count"), "indices": [i + 1 for i in t.get("indices", [])],
                    "max_cos": t.get("max_cos"), "share": t.get("share"), "amplification": m.amplification})
    return out


def reading_facts(report) -> dict | None:
    """The numbers a reading of the intruders is made of (None when no module was compared):
    ``top_k``, ``epsilon``, ``modules``, ``modules_with_intruders``, ``total``, ``worst`` (short name
    of the module with the most), ``worst_count``, ``worst_share``, ``share_of_update`` (median over
    the modules with intruders, or None), ``amplification`` (median, or None)."""
    import statistics

    s = report.summary.get("intruders") or {}
    mods = [m for m in report.modules if (m.intruders or {}).get("count") is not None]
    if not mods:
        return None
    amps = [m.amplification for m in mods if m.amplification is not None]
    worst = max(mods, key=lambda m: (m.intruders["count"], m.intruders["share"]))
    shares = [m.intruders["share_of_update"] for m in mods
              if m.intruders["count"] and m.intruders["share_of_update"] is not None]
    return {"top_k": int(s.get("top_k", 10)), "epsilon": float(s.get("epsilon", 0.5)), "modules": len(mods),
            "modules_with_intruders": int(s.get("modules_with_intruders", 0)), "total": int(s.get("total", 0)),
            "worst": _short(worst.name), "worst_count": int(worst.intruders["count"]),
            "worst_share": float(worst.intruders["share"]),
            "share_of_update": statistics.median(shares) if shares else None,
            "amplification": statistics.median(amps) if amps else None}


def reading(report) -> str:
    """The intruder numbers in one or two plain sentences (the HTML report of ``audit --html``)."""
    f = reading_facts(report)
    if f is None:
        return "No module could be compared with the base."
    amp = ("" if f["amplification"] is None else
           f" Median amplification factor {f['amplification']:.3g} (Hu et al. 2021).")
    if not f["total"]:
        return (f"No intruder dimensions in {f['modules']} modules (top {f['top_k']}, epsilon {f['epsilon']:g})."
                + amp)
    return (f"{f['total']} intruder dimensions in {f['modules_with_intruders']} of {f['modules']} modules (top "
            f"{f['top_k']}, epsilon {f['epsilon']:g}); the most in {f['worst']}: {f['worst_count']}, holding "
            f"{100 * f['worst_share']:.0f} % of its merged weight's energy." + amp)


def report_blocks(report, *, text: str | None = None) -> list:
    """The HTML report's section on the base (reading, map, table), or [] without intruders;
    ``text``: the reading to show (default :func:`reading`)."""
    if not any(m.intruders is not None for m in report.modules):
        return []
    from .charts.intruders import intruder_map_chart
    from .report import ReportChart, ReportTable, ReportText

    s = report.summary.get("intruders") or {}
    rows = intruder_rows(report)
    return [
        ReportText("Against the base", [reading(report) if text is None else text]),
        ReportChart("Intruder dimensions per module",
                    intruder_map_chart(map_records(report), top_k=s.get("top_k", 10),
                                       epsilon=float(s.get("epsilon", 0.5))).to_dict(validate=False),
                    caption="How many of the top-k left singular vectors of W0 + dW have no left singular "
                            "vector of W0 within |cos| epsilon (PEFT's definition); hover a cell for more."),
        ReportTable("Intruders per module", list(INTRUDER_COLUMNS),
                    [[r[c] for c in INTRUDER_COLUMNS] for r in rows], help=INTRUDER_COLUMNS,
                    caption="Indices in the JSON document are 0-based as in PEFT; 'which' here counts from 1."),
    ]
