"""Every adapter a team has: a fleet audit, header screening and a serving rank cap.

``lorarank fleet SOURCE ...`` in the engine's terms::

    expansion = expand_sources(["runs/", "hf://my-org/*"])        # members, nothing read yet
    result = run_fleet(expansion.members, FleetOptions(), workers=2,
                       cache=ResultCache("~/.cache/lorarank-fleet"))
    plan = plan_caps(result.rows, cap=16)                          # which fit vLLM's max_lora_rank
    doc = fleet_document(result, plan)                             # fleet --json

Modules::

    sources.py   SOURCE -> members: files, folders, globs, hf:// ids, Hub queries, uploads
    rows.py      the pure per-adapter function (one plain row; errors are rows)
    cache.py     rows kept by content hash (a rerun audits what changed)
    runner.py    serial, local processes, Ray, Dask; progress with rate and time left
    plan.py      the rank-cap planner; shrunk and padded copies
"""

from __future__ import annotations

from typing import Any, Sequence

from .cache import ResultCache
from .plan import (DEFAULT_KEEP, DEFAULT_SHARE, Plan, apply_caps, cap_files, energy_at, load_member, pad_adapter,
                   plan_caps, shrink_to_cap, slug)
from .rows import DEFAULT_CAPS, FleetOptions, audit_member, audit_members, energy_curve, error_row, row_from_report
from .runner import EXECUTORS, FleetProgress, FleetResult, default_workers, plan_tasks, run_fleet
from .sources import (Expansion, HubQuery, Member, expand_sources, is_hub_query, members_from_uploads,
                      parse_hub_query)

__all__ = [
    "Member", "Expansion", "HubQuery", "expand_sources", "members_from_uploads", "is_hub_query",
    "parse_hub_query", "FleetOptions", "DEFAULT_CAPS", "audit_member", "audit_members", "row_from_report", "error_row",
    "energy_curve", "ResultCache", "run_fleet", "plan_tasks", "FleetResult", "FleetProgress", "EXECUTORS",
    "default_workers", "Plan", "plan_caps", "energy_at", "DEFAULT_KEEP", "DEFAULT_SHARE",
    "shrink_to_cap", "pad_adapter", "cap_files", "apply_caps", "load_member", "slug", "fleet_document",
    "fleet_csv", "csv_columns", "flat_row", "fleet_report", "fleet_charts", "COLUMN_HELP",
]

#: What each table column means (CSV, the page's table, the report).
COLUMN_HELP: dict[str, str] = {
    "source": "The adapter: a path, an upload's name, or hf://owner/name on the Hub.",
    "revision": "The Hub commit that was read (empty for local files).",
    "ok": "Whether the adapter was read and audited; when not, the error says why.",
    "error": "Why the adapter could not be read or audited (one sentence).",
    "format": "Key convention: peft, kohya, diffusers, mlx, npz or gguf.",
    "family": "Module families: lora, dora, adalora, loha, lokr, locon-tucker.",
    "base_model": "The base model the adapter names (adapter_config.json or the file's metadata).",
    "stored_ranks": "Distinct ranks q of the modules (the inner dimension of B·A; LoHa r1·r2).",
    "max_rank": "The largest module rank: a server must allow at least this to load it as it is.",
    "rec_min": "Smallest recommended rank of a module under the rank rule.",
    "rec_median": "Median recommended rank over the modules.",
    "rec_max": "Largest recommended rank of a module under the rank rule.",
    "modules": "Adapted modules.",
    "params": "Parameters stored in the factors.",
    "bytes": "Bytes of the adapter's files (weights and config).",
    "dtypes": "Stored dtypes.",
    "warnings": "The audit's warnings (zero or collapsed modules, DoRA without base weights).",
    "screened": "True when read from the safetensors header only (ranks, no spectra).",
}


def _energy_column(cap: int) -> str:
    return f"energy_at_{cap}"


def csv_columns(caps: Sequence[int] = DEFAULT_CAPS) -> list[str]:  # noqa: N802 - a table's columns
    """The CSV's columns for the given caps."""
    return ["source", "revision", "ok", "error", "format", "family", "base_model", "stored_ranks",
            "max_rank", "rec_min", "rec_median", "rec_max", *[_energy_column(c) for c in caps],
            "modules", "params", "bytes", "dtypes", "warnings", "screened"]


def flat_row(row: dict, caps: Sequence[int] = DEFAULT_CAPS) -> dict[str, Any]:
    """A row with no nested values (the CSV's and the page table's)."""
    rec = row.get("recommended_rank") or {}
    out = {
        "source": row["source"], "revision": row.get("revision"), "ok": row["ok"],
        "error": row.get("error"), "format": row.get("format"), "family": row.get("family"),
        "base_model": row.get("base_model"),
        "stored_ranks": " ".join(map(str, row.get("stored_ranks") or [])),
        "max_rank": row.get("max_rank"), "rec_min": rec.get("min"), "rec_median": rec.get("median"),
        "rec_max": rec.get("max"),
    }
    for cap in caps:
        out[_energy_column(cap)] = energy_at(row, cap) if row.get("ok") and not row.get("screened") else None
    out.update(modules=row.get("modules"), params=row.get("params"), bytes=row.get("bytes"),
               dtypes=" ".join(row.get("dtypes") or []), warnings="; ".join(row.get("warnings") or []),
               screened=row.get("screened"))
    return out


def fleet_csv(rows: Sequence[dict], caps: Sequence[int] = DEFAULT_CAPS) -> str:
    """The fleet table as CSV text (one line per adapter, :func:`csv_columns`), written by
    :func:`lorarank.documents.csv_text` (which neutralises cells a spreadsheet would run)."""
    from ..documents import csv_text

    columns = csv_columns(caps)
    flat = [flat_row(row, caps) for row in rows]
    return csv_text(flat, columns=columns)


def fleet_document(result: FleetResult | Sequence[dict], plan: Plan, *,
                   options: FleetOptions | None = None, notes: Sequence[str] = ()) -> dict:
    """``fleet --json``: ``{"adapters": [...rows...], "plan": {...}, "summary": {...}}``."""
    rows = result.rows if isinstance(result, FleetResult) else list(result)
    summary = {"adapters": len(rows), "ok": sum(1 for r in rows if r["ok"]),
               "failed": sum(1 for r in rows if not r["ok"]),
               "notes": [*(result.notes if isinstance(result, FleetResult) else ()), *notes]}
    if options is not None:
        summary.update(rule=options.rule, value=options.value, caps=list(options.caps),
                       screen=options.screen)
    if isinstance(result, FleetResult):
        summary.update(audited=result.audited, cached=result.cached, executor=result.executor,
                       workers=result.workers, tasks=result.tasks)
    return {"adapters": [dict(r) for r in rows], "plan": plan.to_dict(), "summary": summary}


def fleet_charts(rows: Sequence[dict], *, cap: int, keep: float) -> list:
    """The report's charts (:mod:`lorarank.charts.fleet`): stored against recommended rank and
    energy kept against the cap, as :class:`lorarank.report.ReportChart` blocks (none for
    screened fleets, which have no spectra)."""
    from ..charts.fleet import fleet_cap_chart, fleet_rank_chart
    from ..report import ReportChart

    audited = [r for r in rows if r.get("ok") and not r.get("screened")]
    if not audited:
        return []
    return [ReportChart("Stored against recommended rank", fleet_rank_chart(audited).to_dict(),
                        caption="One point per adapter; under the dashed line an adapter holds more rank "
                                "than the rule needs."),
            ReportChart("Energy kept against the serving cap",
                        fleet_cap_chart(audited, cap=cap, keep=keep).to_dict(),
                        caption=f"Energy kept when every module is cut to rank c; dashed: the cap {cap}, "
                                f"solid: the {keep:g} to keep.")]


def fleet_report(doc: dict, *, charts: Sequence | None = None, bundle: str | None = None,
                 generated: str | None = None) -> str:
    """The fleet as a self-contained HTML report (tables, the planner's sentence, charts;
    default charts: :func:`fleet_charts` at the plan's cap, 16 when it has none)."""
    from ..report import ReportTable, ReportText, render_report

    if charts is None:
        plan_doc = doc["plan"]
        charts = fleet_charts(doc["adapters"], cap=plan_doc.get("cap") or 16, keep=plan_doc.get("keep", 0.99))

    caps = doc.get("summary", {}).get("caps") or list(DEFAULT_CAPS)
    columns = csv_columns(caps)
    shown = [c for c in columns if c not in ("revision", "dtypes")]
    rows = [[flat_row(r, caps)[c] for c in shown] for r in doc["adapters"]]
    plan = doc["plan"]
    sentence = Plan(**{k: plan[k] for k in ("cap", "fit", "shrink", "energy_kept_min", "smallest_cap",
                                            "smallest_listed_cap", "keep", "share", "counted",
                                            "screened")}).sentence()
    s = doc.get("summary", {})
    facts = [("adapters", f"{s.get('adapters', len(rows))} ({s.get('failed', 0)} failed)")]
    if "rule" in s:
        facts.append(("rank rule", f"{s['rule']} {s['value']:g}"))
    help_ = {**COLUMN_HELP, **{_energy_column(c): f"Share of the adapter's energy sum sigma² kept when "
                                                  f"every module is cut to rank {c} (1 when it fits)."
                               for c in caps}}
    blocks = [ReportText("Rank-cap plan", [sentence, *s.get("notes", [])]),
              ReportTable("Adapters", shown, rows, help=help_,
                          caption="Energy at a cap: the share of sum sigma² over all modules kept by "
                                  "the best rank-cap approximation of each module (Eckart-Young). "
                                  "The full JSON document is embedded (element id lorarank-document).")]
    blocks.extend(charts)
    return render_report(title="lorarank fleet audit", subtitle=f"{len(rows)} adapters", facts=facts,
                         blocks=blocks, document=doc, bundle=bundle, generated=generated)
