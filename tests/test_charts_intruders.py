"""Chart builders of the view against the base: intruder map and the cosine picture."""

from __future__ import annotations

import altair as alt
import numpy as np

from lorarank.charts import intruders as charts

RECORDS = [
    {"layer": 0, "module_type": "q_proj", "name": "layers.0.q_proj", "count": 2, "indices": [1, 4],
     "max_cos": [0.3, 0.9, 0.8, 0.45], "share": 0.2, "amplification": 6.5},
    {"layer": 0, "module_type": "down_proj", "name": "layers.0.down_proj", "count": 0, "indices": [],
     "max_cos": [0.9, 0.8], "share": 0.0, "amplification": 1.2},
    {"layer": 1, "module_type": "q_proj", "name": "layers.1.q_proj", "count": None, "indices": [],
     "max_cos": None, "share": None, "amplification": None},
]


def tooltips(spec: dict) -> list[bool]:
    out = []
    for layer in spec.get("layer", [spec]):
        out.append("tooltip" in layer.get("encoding", {}))
    return out


class TestIntruderMap:
    def test_frame(self):
        """One row per module; a module not computed keeps a None count."""
        frame = charts.intruder_map_frame(RECORDS)
        assert list(frame["count"].astype(object).where(frame["count"].notna(), None)) == [2, 0, None]
        assert list(frame["indices"]) == ["1, 4", "-", "-"]
        assert frame["min_cos"][0] == 0.3 and frame["layer"].tolist() == ["0", "0", "1"]

    def test_chart_has_tooltips_and_title(self):
        """Every layer has tooltips; the title names the definition's parameters; the spec validates."""
        chart = charts.intruder_map_chart(RECORDS, top_k=10, epsilon=0.5)
        spec = chart.to_dict()  # validates against the Vega-Lite schema
        assert all(tooltips(spec))
        assert spec["title"] == "Intruders per module (top 10, ε 0.5)"
        assert isinstance(chart, alt.LayerChart)


class TestCosines:
    def test_frame_marks_intruders(self):
        """Long format, rows labelled 1-based, intruders named."""
        cos = np.array([[0.9, 0.1], [0.2, 0.3]])
        frame = charts.cosine_frame(cos, intruders=[1])
        assert list(frame["direction"]) == ["1", "1", "2 (intruder)", "2 (intruder)"]
        assert frame["cos"].tolist() == [0.9, 0.1, 0.2, 0.3]

    def test_chart(self):
        """The heatmap and the best-match bars with the epsilon rule; the spec validates."""
        cos = np.abs(np.random.default_rng(0).standard_normal((10, 64))) / 4
        chart = charts.cosine_chart(cos, max_cos=cos.max(axis=1), nearest=cos.argmax(axis=1), intruders=[0, 3],
                                    epsilon=0.5, name="layers.0.q_proj")
        heat, side = (c.to_dict() for c in chart)
        assert heat["width"] == side["width"] == "container"  # no page wider than a phone
        assert heat["encoding"]["color"]["scale"] == {"scheme": "greys", "domain": [0, 1]}  # 1 is black
        # the bars name their rows themselves (on a phone they stand below the heatmap)
        assert side["layer"][0]["encoding"]["y"].get("axis", {}) is not None
        assert heat["title"]["text"] == ["|cos| with the base's directions", "layers.0.q_proj"]
        assert "tooltip" in heat["encoding"] and all(tooltips(side))
        assert side["layer"][1]["mark"]["type"] == "rule"
