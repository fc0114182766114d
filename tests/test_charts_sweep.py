"""Rank sweep chart builders, read as Vega-Lite specs without a browser."""

from __future__ import annotations

import json

import altair as alt
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lorarank.charts import (
    downsample_index,
    loss_chart,
    loss_frame,
    rank_color_scale,
    rank_label,
    spectrum_chart,
    spectrum_frame,
    split_facets,
)
from lorarank.fit import fit_lora
from lorarank.synthetic import make_target


@pytest.fixture(scope="module")
def sweep():
    """A real default sweep: the target and its fits at r = 2, 4, 16."""
    target = make_target()
    return target, fit_lora(target, [2, 4, 16], steps=300)


def layers_of(spec: dict) -> list[dict]:
    """The layer specs of a (possibly faceted) chart dict."""
    inner = spec.get("spec", spec)
    return inner["layer"]


def data_of(spec: dict, layer: dict | None = None) -> list[dict]:
    """Rows of the dataset a chart (or one of its layers) draws."""
    name = (layer or {}).get("data", spec.get("data", {})).get("name") or spec["data"]["name"]
    return spec["datasets"][name]


class TestSpectrumFrame:
    """The tidy table behind the spectrum chart."""

    def test_rows_hold_every_positive_value(self, sweep):
        """Each panel repeats the target and adds its own trained values, 1-based."""
        target, results = sweep
        fitted = {r.rank: r.singular_values for r in results}
        frame = spectrum_frame(target.singular_values, fitted, max_index=10)
        assert list(frame.columns) == ["panel", "rank", "series", "index", "sigma"]
        for res in results:
            rows = frame[frame["rank"] == res.rank]
            trained = rows[rows["series"] == "trained"]
            np.testing.assert_array_equal(trained["sigma"], res.singular_values)
            assert list(trained["index"]) == list(range(1, res.rank + 1))
            np.testing.assert_array_equal(rows[rows["series"] == "target"]["sigma"],
                                          target.singular_values[:10])
            assert set(rows["panel"]) == {rank_label(res.rank)}

    def test_zero_and_nan_values_are_dropped(self):
        """A log axis cannot place 0 or NaN, so those rows are left out."""
        frame = spectrum_frame([3.0, 1.0, 0.0], {2: [2.0, 0.0], 1: [np.nan]})
        assert frame[frame["series"] == "trained"]["sigma"].tolist() == [2.0]
        assert frame[frame["series"] == "target"]["sigma"].tolist() == [3.0, 1.0, 3.0, 1.0]

    def test_diverged_rank_keeps_its_panel(self):
        """A rank with no trained values (diverged) still shows the target in its panel."""
        frame = spectrum_frame([3.0, 1.0], {4: np.zeros(0)})
        assert frame["panel"].unique().tolist() == ["r = 4"]
        assert frame["series"].unique().tolist() == ["target"]


class TestSpectrumChart:
    """The faceted log-scale spectrum chart."""

    def test_facets_by_rank_in_ascending_order(self, sweep):
        """One panel per rank, sorted by rank, not alphabetically ("r = 16" after "r = 4")."""
        target, results = sweep
        spec = spectrum_chart(target.singular_values, {r.rank: r.singular_values for r in results},
                              noise_floor=0.18).to_dict()
        assert spec["facet"]["field"] == "panel"
        assert spec["facet"]["sort"] == ["r = 2", "r = 4", "r = 16"]

    def test_y_axis_is_log_with_tooltips(self, sweep):
        """Every point layer has a log y scale and tooltips naming series, index and value."""
        target, results = sweep
        spec = spectrum_chart(target.singular_values, {r.rank: r.singular_values for r in results},
                              noise_floor=0.18).to_dict()
        points = layers_of(spec)[:2]
        for layer in points:
            assert layer["encoding"]["y"]["scale"]["type"] == "log"
            fields = [t["field"] for t in layer["encoding"]["tooltip"]]
            assert fields == ["panel", "series", "index", "sigma"]

    @pytest.mark.parametrize("n, log", [(20, False), (40, False), (41, True), (260, True)])
    def test_index_axis_goes_log_past_40(self, n, log):
        """At d = 1024 with r up to 256 the page draws 260 indices: a log index axis gives the
        first 8 directions (the ones that matter) log(8)/log(260) = 37 % of the width instead
        of 3 %; up to 40 indices the axis stays linear."""
        rng = np.random.default_rng(0)
        target = np.sort(rng.uniform(0.1, 40.0, n))[::-1]
        spec = spectrum_chart(target, {n: target}, max_index=n).to_dict()
        for layer in layers_of(spec)[:2]:
            x = layer["encoding"]["x"]
            assert (x.get("scale", {}).get("type") == "log") is log
            assert x["title"] == ("index i (log)" if log else "index i")

    @pytest.mark.parametrize("floor, has_rule", [(0.18, True), (0.0, False), (None, False)])
    def test_noise_floor_rule(self, sweep, floor, has_rule):
        """The dashed floor is drawn at the given value, and only when it is positive."""
        target, results = sweep
        spec = spectrum_chart(target.singular_values, {2: results[0].singular_values},
                              noise_floor=floor).to_dict()
        rules = [layer for layer in layers_of(spec) if layer["mark"]["type"] == "rule"]
        assert len(rules) == int(has_rule)
        if has_rule:
            assert rules[0]["encoding"]["y"]["scale"]["type"] == "log"
            assert rules[0]["mark"]["strokeDash"]
            rows = data_of(spec)
            assert {row["noise_floor"] for row in rows} == {floor}


class TestLossFrame:
    """The tidy table behind the loss chart."""

    def test_downsampled_keeps_first_and_last(self):
        """Long curves are thinned to at most max_points, keeping both ends and the values."""
        curve = np.geomspace(1000.0, 0.1, 2001)
        frame = loss_frame({4: curve}, max_points=100)
        assert len(frame) <= 102
        assert frame["step"].iloc[0] == 0 and frame["step"].iloc[-1] == 2000
        np.testing.assert_array_equal(frame["loss"], curve[frame["step"]])
        assert frame["step"].is_monotonic_increasing

    def test_non_positive_values_dropped(self):
        """Zero, negative and non-finite losses are left out of a log axis."""
        frame = loss_frame({1: [2.0, 0.0, np.inf, 1.0]})
        assert frame["loss"].tolist() == [2.0, 1.0]

    def test_empty(self):
        """No curves give an empty frame with the columns."""
        assert list(loss_frame({}).columns) == ["rank", "step", "loss"]


class TestLossChart:
    """The loss-curve chart."""

    def test_scales_colors_and_tooltips(self, sweep):
        """Log loss, symlog steps, one colour per rank in rank order, tooltips on the lines."""
        _, results = sweep
        spec = loss_chart({r.rank: r.loss for r in results}).to_dict()
        line = spec["layer"][0]
        assert line["mark"]["type"] == "line"
        assert line["encoding"]["y"]["scale"]["type"] == "log"
        assert line["encoding"]["x"]["scale"]["type"] == "symlog"
        assert line["encoding"]["color"]["scale"]["domain"] == ["r = 2", "r = 4", "r = 16"]
        assert [t["field"] for t in line["encoding"]["tooltip"]] == ["rank", "step", "loss"]
        assert len(spec["layer"]) == 1

    def test_diverged_run_is_marked(self):
        """A diverged run ends with a cross whose tooltip says the step."""
        target = make_target()
        results = fit_lora(target, [2, 4], lr=0.5, steps=100)
        assert all(r.diverged for r in results)
        spec = loss_chart({r.rank: r.loss for r in results},
                          diverged_at={r.rank: r.diverged_at for r in results}).to_dict()
        cross = spec["layer"][1]
        assert cross["mark"]["shape"] == "cross"
        rows = spec["datasets"][cross["data"]["name"]]
        assert sorted(row["status"] for row in rows) == sorted(
            f"diverged at step {r.diverged_at}" for r in results)

    def test_loss_axis_labels_in_one_style(self):
        """A diverging curve's axis, drawn by Vega-Lite (vl-convert), labels every power of ten
        from 1e4 up as an exponent: no "10000000000" beside "1e+16"."""
        vl_convert = pytest.importorskip("vl_convert")
        import re

        losses = {4: np.geomspace(100.0, 0.01, 300), 16: np.geomspace(10.0, 1e16, 200)}
        spec = loss_chart(losses, diverged_at={16: 199}).to_dict()
        svg = vl_convert.vegalite_to_svg(spec)
        labels = re.findall(r"<text[^>]*>([^<]*)</text>", svg)
        y_labels = labels[labels.index("optimiser step (symlog)") + 1:labels.index("loss (log)")]
        assert "1e+16" in y_labels and "0.01" in y_labels
        assert not [t for t in y_labels if re.fullmatch(r"\d{5,}", t)], y_labels


class TestCommon:
    """Shared helpers."""

    def test_rank_color_scale_sorted(self):
        """Colours are assigned to ranks in ascending order whatever the input order."""
        scale = rank_color_scale([16, 2, 4]).to_dict()
        assert scale["domain"] == ["r = 2", "r = 4", "r = 16"]
        assert len(set(scale["range"])) == 3

    @given(st.integers(1, 5000), st.integers(2, 500), st.booleans())
    def test_downsample_index(self, n, max_points, log):
        """Indices are sorted, unique, in range, include both ends and are few."""
        idx = downsample_index(n, max_points, log=log)
        assert idx[0] == 0 and idx[-1] == n - 1
        assert np.all(np.diff(idx) > 0)
        assert len(idx) <= max(n if n <= max_points else max_points + 2, 1)


class TestSplitFacets:
    """A faceted chart split into one container-wide chart per panel (the page's grid)."""

    def _spectrum(self, **kw):
        target = np.array([38.0, 33.0, 28.0, 23.0] + [0.1] * 300)
        fitted = {2: [38.0, 33.0], 4: [38.0, 33.0, 28.0, 23.0], 16: [38.0, 33.0, 28.0, 23.0] + [0.05] * 12}
        return spectrum_chart(target, fitted, noise_floor=0.2, **kw)

    def test_one_valid_panel_per_rank_with_its_rows(self):
        """Each panel is a valid single view, titled by its rank, holding only its rows."""
        spec = self._spectrum().to_dict()
        title, panels = split_facets(spec)
        assert title.startswith("Singular values of the trained")
        assert [p["title"] for p in panels] == ["r = 2", "r = 4", "r = 16"]
        for panel in panels:
            alt.LayerChart.from_dict(panel)  # validates against the Vega-Lite schema
            assert panel["width"] == "container"
            assert {row["panel"] for row in panel["data"]["values"]} == {panel["title"]}
        assert sum(len(p["data"]["values"]) for p in panels) == len(spec["datasets"][spec["data"]["name"]])

    def test_axes_shared_across_panels_as_in_the_facet(self):
        """Every panel's y (log) and x domains are the whole data's, noise floor included."""
        _, panels = split_facets(self._spectrum().to_dict())
        for panel in panels:
            for layer in panel["layer"]:
                y = layer["encoding"]["y"]["scale"]
                assert y["domain"] == [0.05, 38.0]
            assert panel["layer"][0]["encoding"]["x"]["scale"]["domain"] == [1.0, 304.0]

    def test_input_left_alone_and_unfaceted_passes_through(self):
        """The caller's dict is not modified; a single view comes back as the only panel."""
        spec = self._spectrum().to_dict()
        before = json.dumps(spec, sort_keys=True)
        split_facets(spec)
        assert json.dumps(spec, sort_keys=True) == before
        single = loss_chart({2: np.linspace(10, 1, 50)}).to_dict()
        assert split_facets(single)[1] == [{k: v for k, v in single.items() if k != "title"}]

    def test_legend_dropped_on_request(self):
        """legend=False removes every panel's legend (the page's caption names the colours)."""
        _, panels = split_facets(self._spectrum().to_dict(), legend=False)
        for panel in panels:
            for layer in panel["layer"]:
                if "color" in layer["encoding"]:
                    assert layer["encoding"]["color"]["legend"] is None
        _, kept = split_facets(self._spectrum().to_dict())
        assert "legend" not in kept[0]["layer"][0]["encoding"]["color"]

    def test_long_index_axis_turns_log(self):
        """Hundreds of indices: the index axis is logarithmic, so the first ones stay apart."""
        spec = self._spectrum().to_dict()
        assert spec["spec"]["layer"][0]["encoding"]["x"]["scale"]["type"] == "log"
        short = spectrum_chart(np.array([3.0, 2.0, 1.0]), {2: [3.0, 2.0]}).to_dict()
        assert "scale" not in short["spec"]["layer"][0]["encoding"]["x"]
