""""Download report" buttons: one self-contained HTML file per page (see lorarank.report).

The file is built only when the button is clicked (a deferred download), so a rerun costs
nothing; the first report of a server process also bundles the Vega libraries (a few seconds).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import streamlit as st

from lorarank.documents import short_name
from lorarank.report import ReportChart, ReportTable, ReportText, audit_report, render_report

if TYPE_CHECKING:  # pandas loads with the first table, not with the page (a cold server's first render)
    import pandas as pd

__all__ = ["report_button", "frame_table", "audit_report_html", "audit_button",
           "sweep_report_html", "stability_report_html", "sweep_button", "stability_button",
           "REPORT_KEYS"]

#: Widget keys of the report buttons, per page.
REPORT_KEYS = {"audit": "audit_report_download", "sweep": "sweep_report_download",
               "stability": "stability_report_download"}

_MD = re.compile(r"\*\*|`")


def _plain(text: str) -> str:
    """Markdown sentences as plain text (bold and code marks dropped)."""
    return _MD.sub("", text)


def report_button(build: Callable[[], str], *, file_name: str, key: str,
                  container: Any = None) -> None:
    """A "Download report (HTML)" button whose file ``build()`` makes when clicked."""
    where = st if container is None else container
    where.download_button(
        "Download report (HTML)", data=lambda: build().encode("utf-8"), file_name=file_name,
        mime="text/html", key=key, on_click="ignore", icon=":material/description:",
        help="One HTML file with the summary, the tables and every chart (interactive, with "
             "tooltips). It opens offline in any browser: no server, nothing loaded from the "
             "network.")


def frame_table(title: str, frame: pd.DataFrame, *, caption: str = "",
                help: Mapping[str, str] | None = None) -> ReportTable:
    """A data frame as a report table (columns and cell values as shown)."""
    rows = [[None if (isinstance(v, float) and v != v) else v for v in row]
            for row in frame.itertuples(index=False, name=None)]
    return ReportTable(title, [str(c) for c in frame.columns], rows, caption=caption,
                       help=dict(help or {}))


def _config_facts(config: Any) -> list[tuple[str, str]]:
    return [(k, ", ".join(map(str, v)) if isinstance(v, (tuple, list)) else str(v))
            for k, v in asdict(config).items()]


def audit_report_html(doc: Mapping[str, Any], *, report: Any, source: str,
                      detected: Sequence[tuple[str, str]], reading: str, rule_text: str,
                      metric: str, metric_label: str, module: str, budget: int,
                      curve: Mapping[str, Any], allocation: Mapping[str, Any],
                      extra: Sequence[Any] = ()) -> str:
    """The audit page's report: what was detected, the reading, the module table and the
    page's charts for its current settings (``doc`` is the CLI's ``--json`` document)."""
    from lorarank.charts.report import audit_charts

    charts = audit_charts(report, rule_text=rule_text, metric=metric, metric_label=metric_label,
                          module=module, mean_rank=budget, curve=curve, allocation=allocation)
    return audit_report(doc, charts=charts, source=source, facts=list(detected),
                        reading=[_plain(reading)], extra=extra)


def sweep_report_html(run: Any, *, table: pd.DataFrame, reading: Sequence[str],
                      spectrum: Mapping[str, Any], loss: Mapping[str, Any],
                      document: Mapping[str, Any], column_help: Mapping[str, str]) -> str:
    """The Rank sweep page's report: settings, results table, reading, spectra, loss curves."""
    return render_report(
        title="lorarank rank sweep",
        subtitle="LoRA fitted at several ranks to a synthetic update of intrinsic rank k",
        facts=_config_facts(run.config),
        blocks=[frame_table("Results", table, help=column_help,
                            caption="Relative error is ||s·B·A − T||_F / ||T||_F; Eckart-Young "
                                    "optimum: the best any rank-r matrix can do."),
                ReportText("What the numbers say", [_plain(s) for s in reading], bullets=True),
                ReportChart("Spectra", spectrum,
                            caption="Singular values of the target and of each trained s·B·A; "
                                    "dashed: the noise floor."),
                ReportChart("Loss curves", loss,
                            caption="Loss 0.5·||s·B·A − T||_F² after each step, log scale.")],
        document=document)


def stability_report_html(config: Any, *, findings: Sequence[str], heatmap: Mapping[str, Any],
                          windows: pd.DataFrame, cells: pd.DataFrame,
                          curves: Sequence[tuple[str, Mapping[str, Any], str]],
                          document_json: bytes, window_help: Mapping[str, str],
                          cell_help: Mapping[str, str]) -> str:
    """The alpha/r stability page's report: settings, findings, heatmap, windows, the curves
    shown, every cell; the CLI's ``stability --json`` document is embedded."""
    blocks: list[Any] = [
        ReportText("What the grid shows", [_plain(s) for s in findings], bullets=True),
        ReportChart("Final error per rule, rank and learning rate", heatmap,
                    caption="Colour: final relative error ||s·B·A − T||_F / ||T||_F (log scale); "
                            "cells marked 'div' diverged."),
        frame_table("Learning-rate window per rank", windows, help=window_help),
        *(ReportChart(title, spec, caption=caption) for title, spec, caption in curves),
        frame_table("Every cell", cells, help=cell_help),
    ]
    return render_report(title="lorarank alpha/r stability",
                         subtitle="Scaling rule x rank x learning rate: where LoRA training diverges",
                         facts=_config_facts(config), blocks=blocks,
                         document=json.loads(document_json))


def audit_button(*, upload: Any, report: Any, detected: Sequence[tuple[str, str]],
                 alpha: float | None, scale: float | None, rule: str, value: float | None,
                 metric: str, module: str, budget: int, comparison: Any = None,
                 compare_module: str | None = None, against: Any = None) -> None:
    """The audit page's report button, for its current settings (built when clicked);
    ``compare_module``: the module of the compare heatmap (default: ``module``); ``against``:
    the audit with intruders of the "Against the base" view, when it was computed."""
    from lorarank.charts import overlap_chart, phi_chart

    from . import audit as ui_audit

    def build() -> str:
        curve, allocation = ui_audit.run_budget(upload, alpha=alpha, scale=scale, rule=rule,
                                                value=value or 0.0, mean_rank=budget)
        extra: list[Any] = []
        if comparison is not None:
            rows = [{**r, "name": short_name(r["name"])} for r in comparison.table()]
            shown = next((m for m in comparison.modules
                          if short_name(m.name) == (compare_module or module)),
                         comparison.modules[0])
            extra = [
                ReportText("Compared with a second adapter",
                           [_plain(ui_audit.compare_reading(comparison))]),
                frame_table("Subspace similarity per shared module",
                            ui_audit.compare_table(comparison), help=ui_audit.COMPARE_HELP),
                ReportChart("phi per module", overlap_chart(rows).to_dict(validate=False),
                            caption="phi(i, j) = ||U_iᵀV_j||_F² / min(i, j) on the right singular "
                                    "vectors of the two A factors; tick: chance level k / d_in."),
                ReportChart(f"phi(i, j) for {short_name(shown.name)}",
                            phi_chart(shown.phi, name=short_name(shown.name))
                            .to_dict(validate=False)),
            ]
        if against is not None:
            from lorarank.against_base import report_blocks

            from . import base_view

            extra.extend(report_blocks(against, text=_plain(base_view.reading(against))))
        doc = json.loads(ui_audit.cli_json_bytes(report))
        return audit_report_html(
            doc, report=report, source=upload.label, detected=detected,
            reading=ui_audit.reading(report), rule_text=ui_audit.rule_text(rule, value),
            metric=metric, metric_label=ui_audit.MAP_METRICS[metric], module=module,
            budget=budget, curve=curve, allocation=allocation, extra=extra)

    stem = "".join(c if c.isalnum() or c in "-_" else "-" for c in _stem(upload))[:60].strip("-")
    report_button(build, file_name=f"lorarank-audit-{stem or 'adapter'}.html",
                  key=REPORT_KEYS["audit"])


def _stem(upload: Any) -> str:
    """A file-name stem for an upload: the Hub repo's name and commit, or the weights file's."""
    if upload.ident.startswith("hub:hf://"):
        ref = upload.ident[len("hub:hf://"):]
        name, _, rest = ref.split("/", 1)[1].partition("@")
        return f"{name}-{rest[:7]}"
    weights = next((n for n, _ in upload.files if not n.lower().endswith(".json")), "adapter")
    return weights.rsplit(".", 1)[0]


def sweep_button(run: Any, charts: Any) -> None:
    """The Rank sweep page's report button (``charts``: :func:`ui.sweep.sweep_charts`)."""
    from . import sweep as ui_sweep

    report_button(lambda: sweep_report_html(
        run, table=ui_sweep.results_table(run), reading=ui_sweep.reading(run),
        spectrum=charts.spectrum, loss=charts.loss, document=ui_sweep.results_json(run),
        column_help=ui_sweep.COLUMN_HELP),
        file_name="lorarank-sweep-report.html", key=REPORT_KEYS["sweep"])


def stability_button(config: Any, views: Any,
                     curves: Sequence[tuple[str, Mapping[str, Any], str]]) -> None:
    """The alpha/r stability page's report button (``views``: :func:`ui.stability.grid_views`;
    ``curves``: ``(title, spec, caption)`` of the loss and norm charts shown)."""
    from . import stability as ui_stab

    findings = [f"{rule.rule}{' '.join(rule.sentences)[len(rule.rule):]}"
                for rule in views.findings.rules]
    report_button(lambda: stability_report_html(
        config, findings=findings, heatmap=views.heatmap, windows=views.windows,
        cells=views.cells, curves=curves, document_json=views.json,
        window_help=ui_stab.WINDOW_HELP, cell_help=ui_stab.CELL_HELP),
        file_name="lorarank-stability-report.html", key=REPORT_KEYS["stability"])
