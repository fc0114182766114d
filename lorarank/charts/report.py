"""The audit's charts for a report, built the same way by the CLI (``audit --html``) and the
Adapter audit page (its download), so both files draw the same thing."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from ..documents import short_name
from .audit import budget_chart, module_spectrum_chart, rank_map_chart

__all__ = ["budget_marks", "audit_charts"]

def budget_marks(report: Any, allocation: Mapping[str, Any], *, budget: int,
                 rule_text: str) -> list[dict]:
    """The points marked on the budget curve: the chosen budget, the rule, the stored adapter."""
    n = max(len(report.modules), 1)
    s = report.summary
    return [
        {"label": f"budget: mean rank {budget}", "mean_rank": allocation["directions"] / n,
         "retained_energy": allocation["retained_energy"], "params": allocation["params"]},
        {"label": f"rule: {rule_text}",
         "mean_rank": sum(m.recommended_rank for m in report.modules) / n,
         "retained_energy": s["retained_energy"], "params": s["params_after"]},
        {"label": "as stored", "mean_rank": sum(m.rank for m in report.modules) / n,
         "retained_energy": 1.0, "params": s["params"]},
    ]


def audit_charts(report: Any, *, rule_text: str, metric: str = "recommended_rank",
                 metric_label: str = "recommended rank", module: str | None = None,
                 mean_rank: int = 4, curve: Mapping[str, Sequence[float]] | None = None,
                 allocation: Mapping[str, Any] | None = None) -> list:
    """``[ReportChart]`` of an :class:`~lorarank.audit.AuditReport`: rank map, one module's
    spectrum (``module``, a short name; default the first), and the global budget curve.

    ``curve`` and ``allocation`` (from :func:`lorarank.audit.budget_curve` and
    :func:`lorarank.audit.allocate_budget`) are computed when not given.
    """
    from ..audit import allocate_budget, budget_curve
    from ..report import ReportChart

    names = [short_name(m.name) for m in report.modules]
    chosen = report.modules[names.index(module)] if module in names else report.modules[0]
    short = short_name(chosen.name)
    if curve is None:
        curve = budget_curve(report)
    if allocation is None:
        allocation = allocate_budget(report, rank_budget=int(mean_rank) * len(report.modules)).to_dict()
    marks = budget_marks(report, allocation, budget=mean_rank, rule_text=rule_text)
    return [
        ReportChart("Rank map", rank_map_chart(report.rank_map(metric), metric=metric_label)
                    .to_dict(validate=False),
                    caption="One cell per layer and module type; hover a cell for the module "
                            "and its value."),
        ReportChart(f"Spectrum of {short}",
                    module_spectrum_chart(chosen.singular_values, cut=chosen.recommended_rank,
                                          name=short, rule=rule_text).to_dict(validate=False),
                    caption=f"Singular values of s·B·A for {short} (r = {chosen.rank}, "
                            f"s = {chosen.scale:.4g}), log scale; dashed: the recommended rank "
                            f"{chosen.recommended_rank} under {rule_text}."),
        ReportChart("Global budget", budget_chart(curve, marks=marks).to_dict(validate=False),
                    caption=f"Retained share of Σσ² when the adapter's top directions by "
                            f"σ² are kept wherever they are; a budget of mean rank "
                            f"{mean_rank} keeps {100 * allocation['retained_energy']:.2f} %."),
    ]
