"""lorarank.report: the self-contained HTML file (structure; the browser test opens it)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from lorarank.errors import ConfigError
from lorarank.report import (AUDIT_COLUMNS, ReportChart, ReportTable, ReportText, audit_module_rows,
                             audit_report, render_report)

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples"
FAKE_BUNDLE = "window.vegaEmbed = function(){ return Promise.resolve(); };"
SPEC = {"data": {"values": [{"x": 1, "y": 2}]}, "mark": "point",
        "encoding": {"x": {"field": "x", "type": "quantitative"},
                     "tooltip": [{"field": "y", "type": "quantitative"}]}}


def _json_script(html: str, element_id: str):
    match = re.search(rf'<script type="application/json" id="{element_id}">(.*?)</script>', html, re.S)
    assert match, element_id
    return json.loads(match.group(1))


def test_blocks_are_escaped_and_specs_embedded():
    evil = "</script><script>alert(1)</script>"
    html = render_report(
        title=f"t {evil}", subtitle=evil, facts=[("k", evil)],
        blocks=[ReportText("words", [evil], bullets=True),
                ReportTable("table", ["a", "b"], [[evil, 1.23456789], [None, math.nan]],
                            caption=evil, help={"a": evil}),
                ReportChart("chart", {**SPEC, "title": evil}, caption="c")],
        document={"note": evil}, bundle=FAKE_BUNDLE, generated="now")
    assert html.count("<script") == 4  # specs, document, bundle, embed code: nothing injected
    assert "alert(1)</script>" not in html
    specs = _json_script(html, "lorarank-specs")
    assert specs[0]["title"] == evil and specs[0]["width"] == "container"
    assert _json_script(html, "lorarank-document") == {"note": evil}
    assert "<td>1.235</td>" in html and "<td>–</td>" in html
    assert 'id="chart-0"' in html and "Content-Security-Policy" in html
    assert "http://" not in html and "https://" not in html  # nothing to fetch


def test_non_finite_chart_or_document_is_refused():
    with pytest.raises(ConfigError, match="strict JSON"):
        render_report(title="t", blocks=[ReportChart("c", {"x": math.inf})], bundle=FAKE_BUNDLE)
    with pytest.raises(ConfigError, match="strict JSON"):
        render_report(title="t", document={"x": math.nan}, bundle=FAKE_BUNDLE)
    with pytest.raises(ConfigError, match="ReportTable"):
        render_report(title="t", blocks=["text"], bundle=FAKE_BUNDLE)


@pytest.mark.skipif(not (SAMPLES / "peft_llama_r8").is_dir(), reason="samples not present")
def test_audit_report_tabulates_the_json_document():
    from lorarank.adapters import load_adapter
    from lorarank.audit import audit_adapter
    from lorarank.charts.report import audit_charts
    from lorarank.documents import audit_document

    report = audit_adapter(load_adapter(SAMPLES / "peft_llama_r8"))
    doc = audit_document([report])
    charts = audit_charts(report, rule_text="energy share 0.99")
    html = audit_report(doc, charts=charts, source="peft_llama_r8", bundle=FAKE_BUNDLE)
    assert _json_script(html, "lorarank-document") == json.loads(json.dumps(doc))
    assert len(_json_script(html, "lorarank-specs")) == len(charts) == 3
    rows = audit_module_rows(doc)
    assert len(rows) == 14 and len(rows[0]) == len(AUDIT_COLUMNS)
    assert rows[0][0] == "model.layers.0.mlp.down_proj" and rows[0][2] == 8
    assert rows[0][5] == pytest.approx(report.modules[0].singular_values[0])
    for column in AUDIT_COLUMNS:
        assert f">{column}</th>" in html


def test_audit_report_charts_compile_in_vega_lite():
    """Every chart of the audit report compiles with the Vega-Lite the report embeds (vl-convert's
    copy): a colour field with ``scale: null`` layered over the rank map's heat scale did not."""
    vl_convert = pytest.importorskip("vl_convert")
    import numpy as np

    from lorarank.adapters import Adapter, LoraModule
    from lorarank.audit import audit_adapter
    from lorarank.charts.report import audit_charts

    rng = np.random.default_rng(0)
    # one module type at a shared rank (every rank-map cell equal), one varied
    modules = [LoraModule(f"base_model.model.model.layers.{i}.self_attn.{kind}_proj",
                          rng.standard_normal((4, 32)).astype(np.float32),
                          rng.standard_normal((24, 4)).astype(np.float32), 2.0, alpha=8.0)
               for i in range(3) for kind in ("q", "v")]
    report = audit_adapter(Adapter(format="peft", modules=modules, scaling="", source="t"))
    charts = audit_charts(report, rule_text="energy share 0.99")
    html = audit_report({"format": "peft", "modules": [], "summary": {}}, charts=charts,
                        bundle=FAKE_BUNDLE)
    for spec in _json_script(html, "lorarank-specs"):
        vega = vl_convert.vegalite_to_vega(spec)  # raises on a spec Vega-Lite cannot compile
        assert vega["marks"]
