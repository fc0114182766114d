"""alpha/r stability chart builders, read as Vega-Lite specs without a browser."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lorarank.charts import (
    records_frame,
    stability_heatmap,
    stability_loss_chart,
    stability_loss_frame,
    update_norm_chart,
)
from lorarank.charts.stability import DIVERGED_COLOR
from lorarank.stability import run_stability
from lorarank.synthetic import make_target

RANKS = (4, 16, 64)
LRS = (0.001, 0.01, 0.1)


@pytest.fixture(scope="module")
def grid():
    """A real small grid with diverged and trained cells."""
    return run_stability(make_target(), ranks=RANKS, lrs=LRS, steps=120)


def datasets(spec: dict) -> dict[str, list[dict]]:
    return spec["datasets"]


def all_layers(spec: dict) -> list[dict]:
    inner = spec.get("spec", spec)
    return inner["layer"]


def tooltip_fields(layer: dict) -> list[str]:
    tips = layer["encoding"]["tooltip"]
    return [t["field"] for t in (tips if isinstance(tips, list) else [tips])]


class TestRecordsFrame:
    """The table behind every chart and the CSV download."""

    def test_one_row_per_cell(self, grid):
        """Columns as documented, rel_err NaN only where diverged, steps_run from the curve."""
        frame = records_frame(grid.records)
        assert list(frame.columns) == ["rule", "rank", "lr", "scale", "rel_err", "diverged",
                                       "diverged_at", "max_update_norm", "steps_run"]
        assert len(frame) == 4 * len(RANKS) * len(LRS)
        assert frame["rel_err"].isna().tolist() == frame["diverged"].tolist()
        for rec, (_, row) in zip(grid.records, frame.iterrows()):
            assert row["steps_run"] == len(rec.loss_curve) - 1
            if rec.diverged:
                assert row["diverged_at"] == rec.diverged_at
            else:
                assert row["rel_err"] == rec.rel_err

    def test_accepts_json_dicts(self, grid):
        """Records read back from the --json document give the same frame."""
        doc = json.loads(json.dumps(grid.to_dict()))
        a, b = records_frame(grid.records), records_frame(doc["records"])
        assert a.equals(b)


class TestHeatmap:
    """One panel per rule, diverged cells marked."""

    def test_facets_and_marks(self, grid):
        """Faceted by rule in the order asked; rects for trained and diverged, a text layer."""
        spec = stability_heatmap(grid.records, rules=["rslora", "fixed-alpha"]).to_dict()
        assert spec["facet"]["field"] == "rule"
        assert spec["facet"]["sort"] == ["rslora", "fixed-alpha"]
        layers = all_layers(spec)
        marks = [l["mark"]["type"] if isinstance(l["mark"], dict) else l["mark"] for l in layers]
        assert marks == ["rect", "rect", "text"]
        assert layers[1]["mark"]["color"] == DIVERGED_COLOR
        assert layers[0]["encoding"]["color"]["scale"]["type"] == "log"

    def test_cells_and_tooltips(self, grid):
        """Every cell is in the data with its error text; tooltips define the numbers."""
        spec = stability_heatmap(grid.records).to_dict()
        (rows,) = datasets(spec).values()
        assert len(rows) == len(grid.records)
        for row in rows:
            rec = grid.cell(row["rule"], row["rank"], row["lr"])
            assert row["error_text"] == ("div" if rec.diverged else f"{rec.rel_err:.3g}")
            assert row["diverged"] == rec.diverged
        for layer in all_layers(spec):
            assert {"rule", "rank", "lr", "error_tip", "status", "max_update_norm"} <= \
                set(tooltip_fields(layer))
        json.dumps(spec, allow_nan=False)  # diverged cells carry null, not NaN

    def test_tooltip_says_diverged_not_null(self, grid):
        """A diverged cell's tooltip error reads "diverged" (its rel_err is null, which Vega shows
        as "null"); a trained cell's reads its error to 4 significant digits."""
        spec = stability_heatmap(grid.records).to_dict()
        (rows,) = datasets(spec).values()
        assert any(row["diverged"] for row in rows) and not all(row["diverged"] for row in rows)
        for row in rows:
            rec = grid.cell(row["rule"], row["rank"], row["lr"])
            assert row["error_tip"] == ("diverged" if rec.diverged else f"{rec.rel_err:.4g}")
        for layer in all_layers(spec):
            tips = {t["field"]: t for t in layer["encoding"]["tooltip"]}
            assert "rel_err" not in tips
            assert tips["error_tip"]["title"] == "final relative error"

    @pytest.mark.parametrize("build", ["heatmap", "loss", "norm"])
    def test_learning_rates_read_short(self, grid, build):
        """Learning-rate tooltips use d3's "~g" (0.1, 0.001), not "g" (0.100000)."""
        cells = [r for r in grid.records if r.rule == "fixed-alpha"]
        chart = {"heatmap": lambda: stability_heatmap(grid.records),
                 "loss": lambda: stability_loss_chart(cells),
                 "norm": lambda: update_norm_chart(grid.records)}[build]()
        spec = chart.to_dict()
        tips = [t for layer in all_layers(spec) for t in layer["encoding"].get("tooltip", [])
                if isinstance(t, dict) and t.get("field") == "lr"]
        assert tips and all(t["format"] == "~g" for t in tips)

    def test_axes_ordered(self, grid):
        """Ranks ascend left to right, learning rates descend top to bottom."""
        layer = all_layers(stability_heatmap(grid.records).to_dict())[0]
        assert layer["encoding"]["x"]["sort"] == list(RANKS)
        assert layer["encoding"]["y"]["sort"] == ["0.1", "0.01", "0.001"]


class TestLossChart:
    """Loss curves of a row or a column of the grid."""

    def test_frame_keeps_curves(self, grid):
        """Each cell's curve is kept (first and last step), positive values only."""
        cells = [r for r in grid.records if r.rule == "fixed-alpha" and r.lr == 0.01]
        frame = stability_loss_frame(cells)
        for rec in cells:
            part = frame[frame["rank"] == rec.rank]
            assert part["step"].iloc[0] == 0
            assert part["step"].iloc[-1] == len(rec.loss_curve) - 1
            np.testing.assert_array_equal(part["loss"], np.asarray(rec.loss_curve)[part["step"]])

    def test_diverged_cells_get_a_cross(self, grid):
        """A diverged cell adds a cross mark whose tooltip names the step."""
        cells = [r for r in grid.records if r.rule == "fixed-alpha" and r.lr == 0.1]
        assert any(r.diverged for r in cells)
        spec = stability_loss_chart(cells, color_by="rank").to_dict()
        layers = spec["layer"]
        assert len(layers) == 2 and layers[1]["mark"]["shape"] == "cross"
        crosses = datasets(spec)[layers[1]["data"]["name"]]
        expected = {f"diverged at step {r.diverged_at}" for r in cells if r.diverged}
        assert {row["status"] for row in crosses} == expected

    def test_color_by_lr(self, grid):
        """A column of the grid is coloured by learning rate."""
        cells = [r for r in grid.records if r.rule == "alpha-eq-r" and r.rank == 16]
        spec = stability_loss_chart(cells, color_by="lr").to_dict()
        assert spec["layer"][0]["encoding"]["color"]["field"] == "lr_label"

    def test_bad_color_by(self, grid):
        """An unknown colour key is refused by name."""
        with pytest.raises(ValueError, match="color_by should be rank, lr or series, got 'step'"):
            stability_loss_chart(grid.records[:2], color_by="step")


class TestUpdateNormChart:
    """The largest ||s B A|| per cell."""

    def test_one_rule_and_reference(self, grid):
        """Only the asked rule's cells are drawn, with ||T|| as a dashed rule."""
        spec = update_norm_chart(grid.records, rule="rslora", target_norm=62.5).to_dict()
        layers = spec["layer"]
        rows = datasets(spec)[spec["data"]["name"]] if "data" in spec else \
            datasets(spec)[layers[0]["data"]["name"]]
        assert {r["rule"] for r in rows} == {"rslora"}
        assert len(rows) == len(RANKS) * len(LRS)
        assert layers[-1]["mark"]["type"] == "rule"
        assert "max_update_norm" in tooltip_fields(layers[1])
        assert layers[0]["encoding"]["x"]["axis"]["values"] == list(LRS)


class TestHeatmapPanels:
    """The heatmap split into one container-wide panel per rule (the page's grid)."""

    def test_panels_share_colours_and_keep_their_height(self):
        """Every rule's panel has the same colour domain and a step height per learning rate."""
        from lorarank.charts import split_facets
        records = [{"rule": rule, "rank": r, "lr": lr, "scale": 1.0, "rel_err": 0.01 * r * k,
                    "diverged": False, "diverged_at": None, "max_update_norm": 1.0,
                    "loss_curve": [1.0, 0.5]}
                   for k, rule in enumerate(["fixed-alpha", "alpha-eq-r", "rslora"], start=1)
                   for r in (4, 8) for lr in (0.001, 0.01)]
        title, panels = split_facets(stability_heatmap(records).to_dict())
        assert title.startswith("Final relative error")
        assert [p["title"] for p in panels] == ["fixed-alpha", "alpha-eq-r", "rslora"]
        scales = {json.dumps(p["layer"][0]["encoding"]["color"]["scale"]) for p in panels}
        assert len(scales) == 1  # one colour scale: panels compare as in one chart
        assert all(p["height"] == {"step": 190 // 2} for p in panels)
        assert all(p["width"] == "container" for p in panels)
