"""Chart builders of the Adapter audit: the frames they draw and the specs they produce."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lorarank.charts import audit as charts


def marks_with_tooltips(spec: dict) -> list[tuple[str, bool]]:
    """(mark type, has a tooltip) for every mark of a (layered) Vega-Lite spec."""
    out = []
    for layer in spec.get("layer", [spec]):
        mark = layer.get("mark")
        kind = mark["type"] if isinstance(mark, dict) else mark
        out.append((kind, "tooltip" in layer.get("encoding", {})))
    return out


RECORDS = [
    {"layer": 0, "module_type": "q_proj", "name": "layers.0.q_proj", "value": 4},
    {"layer": 0, "module_type": "v_proj", "name": "layers.0.v_proj", "value": 8},
    {"layer": 10, "module_type": "q_proj", "name": "layers.10.q_proj", "value": 2},
    {"layer": 2, "module_type": "q_proj", "name": "layers.2.q_proj", "value": 3},
    {"layer": None, "module_type": "lm_head", "name": "lm_head", "value": 1},
]


class TestRankMap:
    """Heatmap layer x module type."""

    def test_frame_labels_layers(self):
        """A module without a layer number is placed in the row '-' sorted first."""
        frame = charts.rank_map_frame(RECORDS)
        assert list(frame["layer"]) == ["0", "0", "10", "2", "-"]
        assert list(frame["layer_num"]) == [0, 0, 10, 2, -1]
        assert frame["value"].dtype == float

    def test_layers_sorted_numerically(self):
        """Layers run 0, 2, 10 (numbers, not strings) and every mark has a tooltip."""
        spec = charts.rank_map_chart(RECORDS, metric="recommended rank").to_dict()
        assert spec["layer"][0]["encoding"]["y"]["sort"] == ["-", "0", "2", "10"]
        assert all(tip for _, tip in marks_with_tooltips(spec))
        assert spec["title"] == "Rank map: recommended rank"

    def test_duplicate_cells_are_counted(self):
        """Two modules in one cell are averaged and counted in the tooltip data."""
        recs = RECORDS + [{"layer": 0, "module_type": "q_proj", "name": "te.layers.0.q_proj",
                           "value": 6}]
        spec = charts.rank_map_chart(recs).to_dict()
        data = next(iter(spec["datasets"].values()))
        cell = [d for d in data if d["layer"] == "0" and d["module_type"] == "q_proj"]
        assert [{k: v for k, v in d.items() if k != "ink"} for d in cell] == [
            {"layer": "0", "module_type": "q_proj", "value": 5.0, "modules": 2,
             "name": "layers.0.q_proj"}]

    @pytest.mark.parametrize("values, ink", [
        ([8, 8, 8], ["black"] * 3),              # one shared rank: the yellow top of viridis
        ([0, 0, 0], ["white"] * 3),              # all zero: the dark bottom
        ([0, 5, 10], ["white", "white", "black"]),
    ])
    def test_cell_text_contrasts_with_its_cell(self, values, ink):
        """Numbers are black on the light upper part of the colour scale, white on the dark."""
        recs = [{"layer": i, "module_type": "q_proj", "name": f"layers.{i}.q_proj", "value": v}
                for i, v in enumerate(values)]
        spec = charts.rank_map_chart(recs).to_dict()
        data = next(iter(spec["datasets"].values()))
        assert [d["ink"] for d in sorted(data, key=lambda d: int(d["layer"]))] == ink
        text = [layer for layer in spec["layer"] if layer["mark"]["type"] == "text"][0]
        assert text["encoding"]["color"] == {"condition": {"test": "(datum.ink === 'black')",
                                                           "value": "black"}, "value": "white"}

    def test_large_maps_drop_the_text(self):
        """Past 600 cells the numbers are not written in the cells."""
        recs = [{"layer": i, "module_type": f"t{j}", "name": f"{i}.{j}", "value": j}
                for i in range(80) for j in range(8)]
        assert [k for k, _ in marks_with_tooltips(charts.rank_map_chart(recs).to_dict())] == ["rect"]

    def test_many_module_types_drop_the_text(self):
        """Past 12 module types (cells too narrow on a phone) the numbers are not written."""
        def marks(n_types):
            recs = [{"layer": i, "module_type": f"t{j}", "name": f"{i}.{j}", "value": j}
                    for i in range(2) for j in range(n_types)]
            return [k for k, _ in marks_with_tooltips(charts.rank_map_chart(recs).to_dict())]
        assert marks(12) == ["rect", "text"]
        assert marks(13) == ["rect"]

    def test_legend_under_the_map(self):
        """The colour legend sits under the map, so the module-type axis keeps the width."""
        spec = charts.rank_map_chart(RECORDS).to_dict()
        assert spec["layer"][0]["encoding"]["color"]["legend"]["orient"] == "bottom"
        axis = spec["layer"][0]["encoding"]["x"]["axis"]
        assert axis["labelAngle"] == -45 and axis["labelOverlap"] is False  # every type labelled


class TestModuleSpectrum:
    """One module's spectrum with the cut."""

    @pytest.mark.parametrize("cut, kept", [(0, 0), (2, 2), (4, 3), (9, 3)])
    def test_kept_and_dropped(self, cut, kept):
        """Indices up to the cut are kept; zeros are not drawn."""
        frame = charts.module_spectrum_frame([4.0, 2.0, 1.0, 0.0], cut=cut)
        assert list(frame["index"]) == [1, 2, 3]
        assert (frame["status"] == "kept").sum() == kept

    def test_energy_column(self):
        """energy is the cumulative share of sum sigma^2."""
        frame = charts.module_spectrum_frame([3.0, 4.0 ** 0.5, 1.0], cut=1)
        assert np.allclose(frame["energy"], [9 / 14, 13 / 14, 1.0])

    def test_cut_rule_between_k_and_k_plus_1(self):
        """The dashed rule sits at k + 0.5 with a tooltip naming the rule; the axis is log."""
        spec = charts.module_spectrum_chart([5.0, 1.0, 0.1], cut=2, name="q", rule="energy 0.99").to_dict()
        rule_layer = spec["layer"][2]
        data = spec["datasets"][rule_layer["data"]["name"]]
        assert data == [{"at": 2.5, "label": "recommended rank 2", "rule": "energy 0.99"}]
        assert spec["layer"][1]["encoding"]["y"]["scale"]["type"] == "log"
        assert [tip for _, tip in marks_with_tooltips(spec)] == [False, True, True]
        assert spec["title"] == "Spectrum of q"

    def test_all_zero_spectrum(self):
        """An all-zero spectrum gives an empty frame, not an error."""
        assert charts.module_spectrum_frame([0.0, 0.0], cut=0).empty
        charts.module_spectrum_chart([0.0, 0.0], cut=0).to_dict()


CURVE = {"directions": list(range(5)), "params": [0, 10, 20, 30, 40],
         "retained_energy": [0.0, 0.5, 0.8, 0.95, 1.0], "mean_rank": [0, 0.5, 1.0, 1.5, 2.0]}


class TestBudget:
    """Retained energy against a global budget."""

    def test_frame_downsamples_keeping_ends(self):
        """A long curve is thinned to max_points with its first and last points."""
        n = 5001
        curve = {"directions": list(range(n)), "params": list(range(n)),
                 "retained_energy": list(np.linspace(0, 1, n)), "mean_rank": list(range(n))}
        frame = charts.budget_frame(curve, max_points=100)
        assert len(frame) <= 102
        assert frame["directions"].iloc[0] == 0 and frame["directions"].iloc[-1] == n - 1

    def test_marks_are_drawn_with_tooltips(self):
        """Each mark is a labelled point with its parameters in the tooltip."""
        marks = [{"label": "budget", "mean_rank": 1.0, "retained_energy": 0.8, "params": 20},
                 {"label": "as stored", "mean_rank": 2.0, "retained_energy": 1.0, "params": 40}]
        spec = charts.budget_chart(CURVE, marks=marks).to_dict()
        assert [k for k, _ in marks_with_tooltips(spec)] == ["line", "point"]
        assert all(tip for _, tip in marks_with_tooltips(spec))
        points = spec["datasets"][spec["layer"][1]["data"]["name"]]
        assert [p["label"] for p in points] == ["budget", "as stored"]
        assert spec["layer"][0]["encoding"]["y"]["scale"]["domain"] == [0, 1]

    def test_marker_shapes_have_a_legend(self):
        """Colour and shape encode the same label with the same title and legend, so the
        legend shows each point's shape and colour (no unexplained markers)."""
        marks = [{"label": n, "mean_rank": float(i), "retained_energy": 0.5, "params": 10}
                 for i, n in enumerate(["budget 4", "rule", "as stored"])]
        enc = charts.budget_chart(CURVE, marks=marks).to_dict()["layer"][1]["encoding"]
        assert enc["shape"]["field"] == enc["color"]["field"] == "label"
        assert enc["shape"]["title"] is None and enc["color"]["title"] is None
        assert enc["shape"]["legend"] == enc["color"]["legend"] == {"orient": "bottom",
                                                                   "direction": "vertical"}
        assert len(set(enc["shape"]["scale"]["range"])) == 3
        assert enc["shape"]["scale"]["domain"] == enc["color"]["scale"]["domain"]

    def test_without_marks(self):
        """No marks: the curve alone."""
        spec = charts.budget_chart(CURVE).to_dict()
        assert [k for k, _ in marks_with_tooltips(spec)] == ["line"]


ROWS = [{"name": "a.q", "top": 4, "top_overlap": 0.9, "phi_1_1": 1.0, "chance": 0.03},
        {"name": "a.v", "top": 2, "top_overlap": 0.1, "phi_1_1": 0.2, "chance": 0.01}]


class TestCompare:
    """Subspace similarity charts."""

    def test_overlap_frame_is_long(self):
        """Two measures per module with the module's k and chance level."""
        frame = charts.overlap_frame(ROWS)
        assert list(frame["measure"]) == ["phi(k, k)", "phi(1, 1)"] * 2
        assert list(frame["phi"]) == [0.9, 1.0, 0.1, 0.2]

    def test_overlap_chart_ticks_chance(self):
        """Bars and a chance tick, both with tooltips, on a [0, 1] axis."""
        spec = charts.overlap_chart(ROWS).to_dict()
        assert marks_with_tooltips(spec) == [("bar", True), ("tick", True)]
        assert spec["layer"][0]["encoding"]["x"]["scale"]["domain"] == [0, 1]

    def test_phi_frame(self):
        """phi(i, j) is laid out 1-based, row-major."""
        frame = charts.phi_frame(np.array([[1.0, 0.5, 0.2], [0.4, 0.3, 0.1]]))
        assert list(zip(frame["i"], frame["j"], frame["phi"]))[:4] == [
            (1, 1, 1.0), (1, 2, 0.5), (1, 3, 0.2), (2, 1, 0.4)]

    @pytest.mark.parametrize("bad", [np.ones(3), np.ones((2, 2, 2))])
    def test_phi_frame_rejects_non_matrix(self, bad):
        """A phi that is not a matrix is refused with its shape in the message."""
        with pytest.raises(ValueError, match=r"expected a 2-D phi matrix, got shape"):
            charts.phi_frame(bad)

    def test_phi_chart(self):
        """The heatmap's colour runs over [0, 1] with a tooltip."""
        spec = charts.phi_chart(np.eye(3), name="q").to_dict()
        assert spec["encoding"]["color"]["scale"]["domain"] == [0, 1]
        assert "tooltip" in spec["encoding"] and spec["title"] == "phi(i, j) of q"


def test_reexported_from_package():
    """The builders are importable from lorarank.charts."""
    import lorarank.charts as pkg

    for name in charts.__all__:
        assert getattr(pkg, name) is getattr(charts, name)
    assert isinstance(charts.rank_map_frame([]), pd.DataFrame)


def _formats(spec):
    """Every d3 number format in a Vega-Lite spec (tooltips, text, legends, axes)."""
    if isinstance(spec, dict):
        for key, value in spec.items():
            if key == "format" and isinstance(value, str):
                yield value
            else:
                yield from _formats(value)
    elif isinstance(spec, list):
        for value in spec:
            yield from _formats(value)


class TestWholeNumbersReadWhole:
    def test_no_padded_significant_digits(self):
        """d3's ".4g" writes a rank of 6 as "6.000" (Python's trims it); every chart's number
        formats use the trimming "~" so a whole rank reads "6"."""
        import re

        from lorarank.charts import (loss_chart, module_spectrum_chart, phi_over_steps_chart,
                                     rank_map_chart, rank_over_steps_chart, spectrum_chart)

        rows = [{"step": s, "module": f"l.{i}.q", "name": f"l.{i}.q", "module_type": "q_proj",
                 "recommended_rank": 6, "stable_rank": 2.5, "phi_next": 0.9, "phi_last": 0.8}
                for s in (10, 20) for i in range(2)]
        specs = [
            rank_map_chart(RECORDS, metric="recommended rank"),
            module_spectrum_chart(np.array([3.0, 2.0, 1.0]), cut=2, name="m", rule="energy 0.9"),
            loss_chart({2: np.array([3.0, 2.0, 1.0])}),
            spectrum_chart(np.array([3.0, 2.0]), {2: np.array([2.9, 1.9])}, noise_floor=0.1, max_index=2),
            rank_over_steps_chart(rows, metric="recommended_rank"),
            phi_over_steps_chart(rows, top=4),
        ]
        found = [f for chart in specs for f in _formats(chart.to_dict())]
        assert found  # the walk sees the formats
        padded = [f for f in found if re.fullmatch(r"[^~]*\.\d+[gr]", f)]
        assert padded == []
