"""Data-mode chart builders, read as Vega-Lite specs without a browser."""

from __future__ import annotations

import math

import pytest

from lorarank.charts import data_loss_chart, data_loss_frame, n_label
from lorarank.data import DataConfig, fit_data
from lorarank.synthetic import make_target


@pytest.fixture(scope="module")
def rows():
    """Real data-mode fits at two n (every result as the page hands it to the chart)."""
    target = make_target()
    out = []
    for n in (128, 1024):
        for res in fit_data(target, [2, 4, 16], data=DataConfig(samples=n), steps=300):
            out.append({"samples": n, **res.to_dict()})
    return out


class TestDataLossFrame:
    def test_three_series_per_fit(self, rows):
        """Held-out, training loss and the rank-r bound for every (n, r), values as given."""
        frame = data_loss_frame(rows)
        assert len(frame) == 3 * len(rows)
        assert set(frame["n"]) == {n_label(128), n_label(1024)}
        row = rows[1]
        held = frame[(frame["samples"] == 128) & (frame["rank"] == 4) & (frame["series"] == "held-out loss")]
        assert held["loss"].item() == row["heldout_loss"]

    def test_diverged_dropped(self):
        """A diverged fit's missing losses are dropped; its bound stays."""
        frame = data_loss_frame([{"samples": 10, "rank": 2, "heldout_loss": None, "train_loss": None,
                                  "optimal_train_loss": 3.0}])
        assert frame["series"].tolist() == ["rank-r optimum (training)"]


class TestDataLossChart:
    def test_spec(self, rows):
        """A valid Vega-Lite layer: lines by n and series, log axes, tooltips, the noise rule
        and the intrinsic-rank rule."""
        chart = data_loss_chart(rows, noise_loss=32.0, true_rank=4)
        spec = chart.to_dict()  # validates against the schema
        layers = spec["layer"]
        assert len(layers) == 5  # the last: r = 2's losses, off the (zoomed) scale
        lines = layers[0]
        assert lines["encoding"]["x"]["scale"]["type"] == "log"
        assert lines["encoding"]["y"]["scale"]["type"] == "log"
        assert {t["field"] for t in lines["encoding"]["tooltip"]} == {"n", "rank", "series", "loss"}
        assert lines["encoding"]["color"]["scale"]["domain"] == ["n = 128", "n = 1024"]
        rule = layers[2]
        assert spec["datasets"][rule["data"]["name"]][0]["loss"] == 32.0
        assert "Held-out loss against rank" in spec["title"]

    def test_without_rules(self, rows):
        """No label noise and no k: just the lines and points (and the off-scale marks)."""
        spec = data_loss_chart(rows).to_dict()
        assert len(spec["layer"]) == 3
        values = [r["loss"] for data in spec["datasets"].values() for r in data if "loss" in r]
        assert len(values) == 3 * len(rows) and all(math.isfinite(v) and v > 0 for v in values)


class TestLossFocus:
    def test_axis_shows_where_heldout_rises(self, rows):
        """The article's default (k = 4, r in 2, 4, 16): r = 2's losses (~700) are 20x the rest.
        The loss axis spans the region from the best rank on (where held-out loss rises with r),
        so that region fills most of the plot's height instead of ~20 px; r = 2 sits on the top
        edge as a triangle naming its losses."""
        spec = data_loss_chart(rows, noise_loss=32.0, true_rank=4).to_dict()
        domain = spec["layer"][0]["encoding"]["y"]["scale"]["domain"]
        frame = data_loss_frame(rows)
        held = frame[frame["series"] == "held-out loss"]
        past_k = frame[frame["rank"] >= 4]["loss"]
        assert domain[1] <= 1.3 * past_k.max() and domain[0] <= frame["loss"].min()
        share = math.log(past_k.max() / past_k.min()) / math.log(domain[1] / domain[0])
        assert share > 0.6  # of the axis's height for r >= k (0.13 when r = 2 set the axis)
        marks = spec["datasets"][spec["layer"][-1]["data"]["name"]]
        assert [m["rank"] for m in marks] == [2]
        r2 = held[held["rank"] == 2]
        assert marks[0]["held-out"] == ", ".join(f"{n}: {v:.5g}" for n, v in zip(r2["n"], r2["loss"]))
        assert spec["layer"][0]["mark"]["clip"] is True

    def test_no_zoom_when_loss_keeps_falling(self, rows):
        """Without a rank past the best one (held-out loss falls to the largest r) the axis
        shows every loss."""
        low = [r for r in rows if r["rank"] <= 4]
        spec = data_loss_chart(low).to_dict()
        assert "domain" not in spec["layer"][0]["encoding"]["y"]["scale"]
        assert len(spec["layer"]) == 2
