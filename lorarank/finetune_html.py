"""The self-contained HTML report of a full fine-tune's audit (``audit --finetuned --html OUT``
and the page's download): the reading, the per-module table, the charts, what was left out,
and the ``--json`` document embedded."""

from __future__ import annotations

from typing import Sequence

from .finetune import ENERGY_THRESHOLDS, ERROR_RANKS, FinetuneReport, finetune_reading
from .report import ReportChart, ReportTable, ReportText, render_report

__all__ = ["FINETUNE_COLUMNS", "finetune_table", "finetune_rows", "finetune_charts", "finetune_html"]

#: Columns of the per-module table, with their definitions (tooltips).
FINETUNE_COLUMNS: dict[str, str] = {
    "module": "The weight's name in the fine-tuned model, without .weight.",
    "kind": "linear, conv (kernel flattened to d_out x in*kh*kw) or embedding.",
    "d_out x d_in": "Shape of the update dW = W_ft - W0.",
    **{f"k({t:g})": (f"LoRA rank for {100 * t:g} % of the energy: the smallest k with "
                     f"sum_(i<=k) sigma_i^2 >= {t:g} ||dW||_F^2; '> K' when more than the K values computed.")
       for t in ENERGY_THRESHOLDS},
    **{f"error @ {k}": f"||dW - best rank-{k}||_F / ||dW||_F (Eckart-Young)." for k in ERROR_RANKS},
    "sigma_1": "Largest singular value of dW.",
    "|dW|/|W0|": "||dW||_F / ||W0||_F.",
    "stable rank": "||dW||_F^2 / sigma_1^2.",
    "intruders": "Intruder dimensions (PEFT's definition, --intruders): top-k left singular vectors of "
                 "W_ft whose largest |cos| with every left singular vector of W0 is below epsilon.",
    "flags": "unchanged: dW is exactly 0 (no LoRA needed); not converged: the bound did not reach "
             "the tolerance.",
}


def finetune_table(report: FinetuneReport) -> tuple[list[str], list[list]]:
    """The columns and rows of the per-module table (the page's and the report's): the
    intruders column only where intruders were counted (``--intruders``)."""
    columns, rows = list(FINETUNE_COLUMNS), finetune_rows(report)
    at = columns.index("intruders")
    if all(row[at] is None for row in rows):
        columns.pop(at)
        rows = [row[:at] + row[at + 1:] for row in rows]
    return columns, rows


def finetune_rows(report: FinetuneReport) -> list[list]:
    """The table's rows, in :data:`FINETUNE_COLUMNS` order (unknown ranks as ``"> K"``;
    intruders None when not counted)."""
    rows = []
    for m in report.modules:
        rows.append([m.name, m.kind, f"{m.shape[0]} x {m.shape[1]}",
                     *[m.needs(t) for t in ENERGY_THRESHOLDS],
                     *[m.lora_error[str(k)] for k in ERROR_RANKS],
                     float(m.singular_values[0]) if m.singular_values.size else 0.0,
                     m.relative_size, m.stable_rank,
                     m.intruders["count"] if m.intruders is not None else None,
                     ", ".join(m.flags) or "-"])
    return rows


def finetune_charts(report: FinetuneReport, *, metric: str = "energy_rank_0.9",
                    module: str | None = None) -> list[ReportChart]:
    """The page's charts as report blocks: rank map (``metric``), rank needed per type, and the
    spectrum of ``module`` (default: the first changed one)."""
    from .charts.finetune import (FINETUNE_METRICS, finetune_map_chart, finetune_spectrum_chart,
                                  rank_needed_chart)

    if not report.modules:
        return []
    records = [{**r, "computed": m.computed} for r, m in zip(report.rank_map(metric), report.modules)]
    names = [m.name for m in report.modules]
    changed = [m for m in report.modules if "unchanged" not in m.flags] or list(report.modules)
    chosen = report.modules[names.index(module)] if module in names else changed[0]
    return [
        ReportChart("Rank map", finetune_map_chart(records, metric=FINETUNE_METRICS[metric]).to_dict(validate=False),
                    caption="One cell per layer and module type; grey '> K': more than the K singular "
                            "values computed. Hover a cell for the module."),
        ReportChart("LoRA rank each module needs",
                    rank_needed_chart([m.to_dict() for m in report.modules]).to_dict(validate=False),
                    caption="Per module type: one point per module and energy share, a tick at the "
                            "median; a hollow triangle at K means more than K."),
        ReportChart(f"Spectrum of {chosen.name}",
                    finetune_spectrum_chart(chosen.singular_values, energy=chosen.energy, name=chosen.name,
                                            energy_rank=chosen.energy_rank).to_dict(validate=False),
                    caption="Top singular values of W_ft - W0 (log scale); dashed: the energy ranks. "
                            "Hover a point for the share of ||dW||_F^2 up to it."),
    ]


def finetune_html(report: FinetuneReport, *, charts: Sequence[ReportChart] | None = None,
                  metric: str = "energy_rank_0.9", module: str | None = None,
                  generated: str | None = None, bundle: str | None = None) -> str:
    """The report as one HTML file (opens offline; the ``--json`` document is embedded)."""
    if charts is None:
        charts = finetune_charts(report, metric=metric, module=module)
    s = report.summary
    facts = [("fine-tuned model", report.finetuned), ("base", report.base),
             ("weight matrices", f"{report.total:,} in common" + (f", {len(report.modules):,} measured "
                                                                 "(stopped)" if report.stopped else "")),
             ("settings", ", ".join(f"{k} {v}" for k, v in report.settings.to_dict().items())),
             ("singular values", f"each within {s.get('max_sv_bound', 0.0):.1g} sigma_1 of the true one")]
    reading = [p.replace("**", "") for p in finetune_reading(report)]
    columns, rows = finetune_table(report)
    blocks = [ReportText("Summary", reading),
              ReportTable("Per module", columns, rows, help=FINETUNE_COLUMNS,
                          caption="sigma_i are the singular values of dW = W_ft - W0. Hover a column "
                                  "header for its definition. The full document (top singular values "
                                  "of every module) is embedded as JSON (element id lorarank-document)."),
              *charts]
    if report.others:
        blocks.append(ReportTable(
            "Not audited", ["tensor", "kind", "changed", "why"],
            [[o.name, o.kind, {True: "yes", False: "no", None: "not compared"}[o.changed], o.reason]
             for o in report.others],
            caption="Tensors that are not weight matrices shared by both models; never dropped silently."))
    return render_report(title="lorarank: full fine-tune", subtitle=f"{report.finetuned} against {report.base}",
                         facts=facts, blocks=blocks, document=report.to_dict(), generated=generated,
                         bundle=bundle)
