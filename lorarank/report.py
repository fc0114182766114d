"""One self-contained HTML file for a result: summary, tables and interactive charts.

The file opens from ``file://`` with no server and no network: the Vega, Vega-Lite and
Vega-Embed libraries are embedded, bundled by ``vl-convert-python``
(:func:`vl_convert.javascript_bundle`), and every chart is its Vega-Lite spec rendered in the
browser with tooltips. Pure: the functions take documents and chart specs (dicts) and return
a string; nothing here computes a number.

>>> html = render_report(title="t", blocks=[ReportTable("x", ["a"], [[1]])])  # doctest: +SKIP
"""

from __future__ import annotations

import datetime as _dt
import html as _html
import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Mapping, Sequence, Union

from .documents import MODULE_COLUMNS, module_row
from .errors import ConfigError

__all__ = ["ReportTable", "ReportChart", "ReportText", "render_report", "audit_report",
           "vega_bundle", "audit_module_rows", "AUDIT_COLUMNS"]


@dataclass(frozen=True)
class ReportTable:
    """A table: ``columns`` and ``rows`` (values written as text; floats to 4 significant
    digits), a ``caption`` defining the numbers, and per-column ``help`` (a tooltip)."""

    title: str
    columns: Sequence[str]
    rows: Sequence[Sequence[Any]]
    caption: str = ""
    help: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ReportChart:
    """A chart: a Vega-Lite spec (``alt.Chart.to_dict()``), drawn full width."""

    title: str
    spec: Mapping[str, Any]
    caption: str = ""


@dataclass(frozen=True)
class ReportText:
    """Paragraphs (plain text, escaped) under an optional heading; ``bullets`` draws a list."""

    title: str
    paragraphs: Sequence[str]
    bullets: bool = False


Block = Union[ReportTable, ReportChart, ReportText]


@lru_cache(maxsize=1)
def vega_bundle() -> str:
    """Vega + Vega-Lite + Vega-Embed as one script that defines ``window.vegaEmbed``.

    Built by vl-convert (its bundled copies, no network); the first call in a process takes
    several seconds, later calls return the cached string.
    """
    import vl_convert

    return vl_convert.javascript_bundle()


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else "–"
    if isinstance(value, (list, tuple)):
        return ", ".join(_cell(v) for v in value)
    return str(value)


def _script_json(value: Any) -> str:
    """JSON safe inside a <script> element (no '</', no '<!--')."""
    text = json.dumps(value, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _esc(text: Any) -> str:
    return _html.escape(str(text), quote=True)


_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;
max-width:1200px;padding:0 1.5rem;color:#262730;line-height:1.45}
h1{margin-bottom:.2rem}h2{margin-top:2.2rem;border-bottom:1px solid #e6e6ea;padding-bottom:.2rem}
.sub{color:#5c5f6a;margin-top:0}.caption{color:#5c5f6a;font-size:.88rem;margin:.4rem 0 1rem}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:.2rem 1rem}
dl.facts dt{font-weight:600}dl.facts dd{margin:0}
.tablewrap{max-height:32rem;overflow:auto;border:1px solid #e6e6ea;border-radius:6px}
table{border-collapse:collapse;font-size:.85rem;width:100%}
th,td{padding:.25rem .6rem;border-bottom:1px solid #f0f0f3;text-align:right;white-space:nowrap}
th{position:sticky;top:0;background:#f7f7f9;cursor:help}
td:first-child,th:first-child{text-align:left}
.chart{width:100%;min-height:120px}.err{color:#b00020}
footer{margin-top:3rem;color:#8a8d96;font-size:.8rem}
"""

_EMBED = """
(function(){
  var specs = JSON.parse(document.getElementById('lorarank-specs').textContent);
  specs.forEach(function(spec, i){
    var el = document.getElementById('chart-' + i);
    vegaEmbed(el, spec, {actions: {export: true, source: false, compiled: false, editor: false},
                         renderer: 'svg'})
      .then(function(){ el.setAttribute('data-rendered', 'true'); })
      .catch(function(err){ el.setAttribute('data-rendered', 'error');
                            el.innerHTML = '<p class="err">chart failed: ' +
                              String(err).replace(/[<&]/g, '') + '</p>'; });
  });
})();
"""


def _prepare_spec(spec: Mapping[str, Any]) -> dict:
    spec = json.loads(json.dumps(spec, allow_nan=False))  # a copy, and strict JSON
    if "width" not in spec and not any(k in spec for k in ("hconcat", "vconcat", "concat", "facet")):
        spec["width"] = "container"
    spec.setdefault("autosize", {"type": "fit-x", "contains": "padding"})
    return spec


def render_report(*, title: str, subtitle: str = "", facts: Sequence[tuple[str, str]] = (),
                  blocks: Sequence[Block] = (), document: Any = None,
                  generated: str | None = None, bundle: str | None = None) -> str:
    """The HTML file as a string.

    Parameters
    ----------
    title, subtitle : str
        Heading and the line under it.
    facts : sequence of (label, text)
        A definition list under the heading (what was detected, the settings).
    blocks : sequence of ReportTable, ReportChart, ReportText
        In order.
    document : JSON-friendly, optional
        Embedded verbatim as ``<script type="application/json" id="lorarank-document">`` so the
        numbers can be read back from the file (e.g. the CLI's ``--json`` document).
    generated : str, optional
        Footer time stamp; default now (UTC).
    bundle : str, optional
        The Vega script; default :func:`vega_bundle` (tests may pass a cached one).

    Raises
    ------
    ConfigError
        A chart spec or the document is not strict JSON (NaN or inf).
    """
    specs = []
    body = [f"<h1>{_esc(title)}</h1>"]
    if subtitle:
        body.append(f'<p class="sub">{_esc(subtitle)}</p>')
    if facts:
        body.append('<dl class="facts">' + "".join(
            f"<dt>{_esc(k)}</dt><dd>{_esc(v)}</dd>" for k, v in facts) + "</dl>")
    for block in blocks:
        if isinstance(block, ReportText):
            if block.title:
                body.append(f"<h2>{_esc(block.title)}</h2>")
            if block.bullets:
                body.append("<ul>" + "".join(f"<li>{_esc(p)}</li>" for p in block.paragraphs) + "</ul>")
            else:
                body.extend(f"<p>{_esc(p)}</p>" for p in block.paragraphs)
        elif isinstance(block, ReportTable):
            head = "".join(f'<th title="{_esc(block.help.get(c, ""))}">{_esc(c)}</th>'
                           for c in block.columns)
            rows = "".join("<tr>" + "".join(f"<td>{_esc(_cell(v))}</td>" for v in row) + "</tr>"
                           for row in block.rows)
            body.append(f"<h2>{_esc(block.title)}</h2>")
            body.append(f'<div class="tablewrap"><table><thead><tr>{head}</tr></thead>'
                        f"<tbody>{rows}</tbody></table></div>")
            if block.caption:
                body.append(f'<p class="caption">{_esc(block.caption)}</p>')
        elif isinstance(block, ReportChart):
            try:
                specs.append(_prepare_spec(block.spec))
            except ValueError as exc:
                raise ConfigError(f"chart {block.title!r} is not strict JSON: {exc}") from None
            body.append(f"<h2>{_esc(block.title)}</h2>")
            body.append(f'<div class="chart" id="chart-{len(specs) - 1}" '
                        f'data-title="{_esc(block.title)}"></div>')
            if block.caption:
                body.append(f'<p class="caption">{_esc(block.caption)}</p>')
        else:
            raise ConfigError(f"a report block should be a ReportTable, ReportChart or ReportText, "
                              f"got {type(block).__name__}")
    stamp = generated or _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body.append(f"<footer>Written by lorarank on {_esc(stamp)}. Self-contained: the charts are "
                "drawn by the Vega libraries embedded in this file; nothing is loaded from the "
                "network.</footer>")
    try:
        doc_json = "" if document is None else _script_json(document)
    except ValueError as exc:
        raise ConfigError(f"the report's document is not strict JSON: {exc}") from None
    js = (bundle if bundle is not None else vega_bundle()).replace("</script", "<\\/script")
    return "".join([
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
        "script-src 'unsafe-inline' 'unsafe-eval'; style-src 'unsafe-inline'; img-src data: blob:\">",
        f"<title>{_esc(title)}</title><style>{_STYLE}</style></head><body>",
        "\n".join(body),
        f'<script type="application/json" id="lorarank-specs">{_script_json(specs)}</script>',
        (f'<script type="application/json" id="lorarank-document">{doc_json}</script>'
         if doc_json else ""),
        f"<script>{js}</script><script>{_EMBED}</script></body></html>\n",
    ])


# ------------------------------------------------------------------------------------ audit
#: Columns of the audit report's module table, with their definitions (a subset of the page's).
AUDIT_COLUMNS: dict[str, str] = {name: MODULE_COLUMNS[name] for name in (
    "module", "shape", "r", "alpha", "scale s", "sigma_1", "k(0.9)", "k(0.95)", "k(0.99)",
    "stable rank", "entropy rank", "recommended rank")}


def audit_module_rows(doc: Mapping[str, Any]) -> list[list[Any]]:
    """One row per module of an ``audit --json`` document, in :data:`AUDIT_COLUMNS` order."""
    rows = [module_row(m) for m in doc.get("modules", [])]
    return [[row[name] for name in AUDIT_COLUMNS] for row in rows]


def audit_report(doc: Mapping[str, Any], *, charts: Sequence[ReportChart] = (),
                 title: str = "lorarank adapter audit", source: str = "",
                 facts: Sequence[tuple[str, str]] = (), reading: Sequence[str] = (),
                 extra: Sequence[Block] = (), generated: str | None = None,
                 bundle: str | None = None) -> str:
    """The audit of one adapter as a self-contained HTML file.

    Parameters
    ----------
    doc : mapping
        The ``python -m lorarank audit --json`` document (``format``, ``modules``,
        ``summary``); embedded verbatim and tabulated.
    charts : sequence of ReportChart
        The page's charts (rank map, a module's spectrum, the budget curve, ...).
    source : str
        Where the adapter came from (file names, or ``hf://owner/name@commit``).
    facts : sequence of (label, text)
        What was detected (format, orientation, scaling, dtype, ...); default: format and the
        summary's counts.
    reading : sequence of str
        Sentences read off the numbers.
    extra : sequence of blocks
        Appended after the charts (e.g. a comparison).

    Returns
    -------
    str
    """
    summary = doc.get("summary", {})
    if not facts:
        facts = [("format", str(doc.get("format", "?")))]
    facts = [*([("adapter", source)] if source else []), *facts]
    rec = summary.get("recommended_rank") or {}
    summary_lines = []
    if rec:
        summary_lines.append(
            f"Recommended under {summary.get('rule', '?')} {summary.get('value', '')}: rank "
            f"{rec.get('min')}..{rec.get('max')} (median {rec.get('median')}); parameters "
            f"{summary.get('params', 0):,} -> {summary.get('params_after', 0):,}; retained energy "
            f"{_cell(summary.get('retained_energy'))}.")
    blocks: list[Block] = [ReportText("Summary", [*reading, *summary_lines])]
    blocks.append(ReportTable(
        "Per module", list(AUDIT_COLUMNS), audit_module_rows(doc), help=AUDIT_COLUMNS,
        caption="σᵢ are the singular values of s·B·A, computed from the factors. "
                "Hover a column header for its definition. The full document (every singular "
                "value) is embedded in this file as JSON (element id lorarank-document)."))
    blocks.extend(charts)
    blocks.extend(extra)
    return render_report(title=title, subtitle=source, facts=facts, blocks=blocks, document=doc,
                         generated=generated, bundle=bundle)
