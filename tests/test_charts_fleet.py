"""Chart builders of the Fleet page and the fleet report: valid Vega-Lite, the right points,
tooltips, the cap and the energy to keep drawn as rules."""

from __future__ import annotations

import json

import numpy as np

from lorarank.charts.fleet import cap_curves, fleet_cap_chart, fleet_rank_chart, rank_points
from lorarank.fleet import fleet_document, fleet_report, plan_caps
from lorarank.fleet.rows import energy_curve


def rows():
    rng = np.random.default_rng(0)
    out = []
    for i, r in enumerate((4, 8, 32)):
        curve = energy_curve([np.sort(rng.random(r))[::-1]])
        out.append({"source": f"a{i}", "ok": True, "max_rank": r, "energy_curve": curve, "family": "lora",
                    "recommended_rank": {"min": 1, "median": r // 2, "max": r - 1}, "params": 100 * r,
                    "screened": False, "stored_ranks": [r], "energy_at_cap": {}, "warnings": []})
    out.append({"source": "bad", "ok": False, "error": "x", "max_rank": None, "energy_curve": [],
                "recommended_rank": {}, "stored_ranks": []})
    return out


def test_rank_chart():
    chart = fleet_rank_chart(rows())
    spec = chart.to_dict()                      # validates against the Vega-Lite schema
    frame = rank_points(rows())
    assert list(frame["source"]) == ["a0", "a1", "a2"] and list(frame["stored"]) == [4, 8, 32]
    assert "tooltip" in json.dumps(spec)


def test_cap_chart():
    data = cap_curves(rows(), top=40)
    a2 = data[data["source"] == "a2"].set_index("cap")["energy"]
    assert a2[40] == 1.0 and a2[32] == 1.0 and a2[16] == rows()[2]["energy_curve"][15]
    spec = fleet_cap_chart(rows(), cap=16, keep=0.95).to_dict()
    text = json.dumps(spec)
    assert '"cap": 16' in text and '"energy": 0.95' in text and "shrunk" in text


def test_report_has_plan_table_charts_and_document():
    doc = fleet_document(rows(), plan_caps(rows(), cap=16))
    html = fleet_report(doc, bundle="")
    assert "At cap 16, 2 of 3 adapters fit as they are" in html
    assert 'id="lorarank-document"' in html and "Energy kept against the serving cap" in html
