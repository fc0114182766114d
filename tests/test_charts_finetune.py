"""Charts and the HTML report of a full fine-tune (no browser): what is drawn, unknown ranks never as numbers."""

import json
import re

import numpy as np
import pytest

from lorarank.charts import (FINETUNE_METRICS, finetune_map_chart, finetune_map_frame, finetune_spectrum_chart,
                             finetune_spectrum_frame, rank_needed_chart, rank_needed_frame)
from lorarank.finetune import FinetuneSettings, audit_finetune, demo_models
from lorarank.finetune_html import finetune_html, finetune_rows
from lorarank.weights import open_model_bytes


@pytest.fixture(scope="module")
def report():
    base, ft = demo_models()
    return audit_finetune(open_model_bytes(ft), open_model_bytes(base))


def records(report, metric):
    return [{**r, "computed": m.computed} for r, m in zip(report.rank_map(metric), report.modules)]


class TestRankMap:
    def test_every_module_has_its_cell(self, report):
        frame = finetune_map_frame(records(report, "energy_rank_0.9"))
        assert len(frame) == len(report.modules) == 16
        row = frame[frame["name"] == "model.layers.1.self_attn.q_proj"].iloc[0]
        assert (row["layer"], row["module_type"], row["value"]) == ("1", "q_proj", 3.0)
        spec = finetune_map_chart(records(report, "energy_rank_0.9"), metric="k(0.9)").to_dict()
        assert spec["title"] == "Rank map: k(0.9)"

    def test_unknown_rank_is_a_grey_cell_saying_more_than(self, report):
        recs = records(report, "energy_rank_0.99")
        recs[2] = {**recs[2], "value": None, "computed": 32}
        frame = finetune_map_frame(recs)
        assert np.isnan(frame.loc[2, "value"]) and frame.loc[2, "label"] == "> 32"
        spec = finetune_map_chart(recs, metric="k(0.99)").to_dict()
        grey = [layer for layer in spec["layer"] if layer.get("mark", {}).get("color") == "#9e9e9e"]
        assert len(grey) == 1
        data = spec["datasets"][grey[0]["data"]["name"]]
        assert [d["label"] for d in data] == ["> 32"]

    def test_layerless_modules_are_not_averaged(self, report):
        """embed_tokens and lm_head share layer '-': two cells, not one mean."""
        frame = finetune_map_frame(records(report, "relative_size"))
        assert set(frame[frame["layer"] == "-"]["module_type"]) == {"embed_tokens", "lm_head"}
        spec = finetune_map_chart(records(report, "relative_size"), metric="x").to_dict()
        assert "aggregate" not in json.dumps(spec)

    @pytest.mark.parametrize("metric", list(FINETUNE_METRICS))
    def test_every_metric_draws(self, report, metric):
        finetune_map_chart(records(report, metric), metric=FINETUNE_METRICS[metric]).to_dict()


class TestRankNeeded:
    def test_one_point_per_module_and_share_unchanged_left_out(self, report):
        docs = [m.to_dict() for m in report.modules]
        frame = rank_needed_frame(docs)
        assert len(frame) == 3 * 15  # lm_head is unchanged in the demo
        assert list(dict.fromkeys(frame["module_type"]))[-1] == "embed_tokens"  # layered types first

    def test_unknown_is_a_hollow_triangle_at_k(self, report):
        docs = [m.to_dict() for m in report.modules]
        docs[2] = {**docs[2], "energy_rank": {**docs[2]["energy_rank"], "0.99": None}, "computed": 40}
        frame = rank_needed_frame(docs)
        unknown = frame[~frame["known"]]
        assert list(unknown["label"]) == ["> 40"] and list(unknown["rank"]) == [40.0]
        spec = rank_needed_chart(docs).to_dict()
        marks = [layer["mark"] for layer in spec["layer"]]
        assert {"type": "point", "size": 70, "filled": False, "shape": "triangle-up", "strokeWidth": 1.5} in marks


def test_spectrum_share_is_of_the_whole_energy(report):
    """The tooltip's share divides by ||dW||_F^2, not by the sum of the values drawn."""
    m = report.modules[3]
    frame = finetune_spectrum_frame(m.singular_values[:5], energy=m.energy)
    assert frame["share"].iloc[-1] == pytest.approx(np.sum(m.singular_values[:5] ** 2) / m.energy)
    assert frame["share"].iloc[-1] < 0.999
    spec = finetune_spectrum_chart(m.singular_values, energy=m.energy, name=m.name,
                                   energy_rank=m.energy_rank).to_dict()
    rules = [layer for layer in spec["layer"] if layer["mark"].get("type") == "rule"]
    assert len(rules) == 1 and len(spec["datasets"][rules[0]["data"]["name"]]) == 3


def test_html_report_embeds_the_document_and_says_unknown(report):
    html = finetune_html(report, generated="2026-12-06", bundle="/* vega */")
    doc = json.loads(re.search(r'id="lorarank-document">(.*?)</script>', html, re.S).group(1))
    assert doc == json.loads(json.dumps(report.to_dict()))
    assert "LoRA rank each module needs" in html and "Not audited" in html
    settings = FinetuneSettings(max_rank=8, top=8, method="randomized")
    base, ft = demo_models()
    small = audit_finetune(open_model_bytes(ft), open_model_bytes(base), settings=settings)
    rows = finetune_rows(small)
    assert all(isinstance(r[3], str) for r in rows)  # k(0.5) as text: a number or "> K"
