"""Chart builders of rank over training: the frames they draw and the specs they produce."""

from __future__ import annotations

import pytest

from lorarank.charts import series as charts


def rows():
    """Two module types over three steps; q has two layers."""
    data = {  # (module, type): [(recommended, phi_next, phi_last)] per step
        ("l.0.q", "q_proj"): [(4, 0.5, 0.2), (6, 0.9, 0.8), (6, None, 1.0)],
        ("l.1.q", "q_proj"): [(2, 0.7, 0.4), (2, 0.8, 0.6), (4, None, 1.0)],
        ("l.0.v", "v_proj"): [(8, 0.6, 0.3), (8, 0.95, 0.9), (8, None, 1.0)],
    }
    out = []
    for (module, kind), values in data.items():
        for step, (rec, nxt, last) in zip((10, 20, 30), values):
            out.append({"step": step, "module": module, "name": module, "module_type": kind,
                        "recommended_rank": rec, "stable_rank": rec / 2, "phi_next": nxt, "phi_last": last})
    return out


def marks(spec: dict) -> list[tuple[str, bool]]:
    out = []
    for layer in spec.get("layer", [spec]):
        mark = layer.get("mark")
        out.append((mark["type"] if isinstance(mark, dict) else mark, "tooltip" in layer.get("encoding", {})))
    return out


class TestRankOverSteps:
    """One line per module type (mean over layers) and a module on demand."""

    def test_frame_means_per_type(self):
        """q_proj's line is the mean of its two layers at each step, with min and max."""
        frame = charts.rank_over_steps_frame(rows())
        q = frame[frame["line"] == "q_proj"]
        assert list(q["step"]) == [10, 20, 30]
        assert list(q["value"]) == [3.0, 4.0, 5.0]
        assert list(q["min"]) == [2, 2, 4] and list(q["max"]) == [4, 6, 6]
        assert set(q["modules"]) == {2}

    def test_frame_module_line(self):
        """The chosen module adds its own line of its own values."""
        frame = charts.rank_over_steps_frame(rows(), metric="stable_rank", module="l.1.q")
        one = frame[frame["kind"] == "module"]
        assert list(one["line"].unique()) == ["l.1.q"] and list(one["value"]) == [1.0, 1.0, 2.0]

    def test_bad_metric(self):
        """An unknown metric names itself."""
        with pytest.raises(ValueError, match="got 'nope'"):
            charts.rank_over_steps_frame(rows(), metric="nope")

    def test_chart_spec(self):
        """Lines, points with tooltips and the settled rule; the chart validates."""
        chart = charts.rank_over_steps_chart(rows(), module="l.0.q", settled_step=30)
        spec = chart.to_dict()  # validates against the Vega-Lite schema
        assert marks(spec) == [("line", False), ("point", True), ("rule", True)]
        assert spec["title"] == "Recommended rank over training steps"
        rule_data = spec["datasets"][spec["layer"][2]["data"]["name"]]
        assert rule_data[0]["step"] == 30

    def test_empty(self):
        """No rows give an empty frame, not an error."""
        assert charts.rank_over_steps_frame([]).empty


class TestPhiOverSteps:
    """phi with the next and the last checkpoint, per module type."""

    def test_frame(self):
        """The last step has no 'next'; means per type; the module's own values."""
        frame = charts.phi_over_steps_frame(rows(), module="l.0.v")
        nxt = frame[(frame["measure"] == "next checkpoint") & (frame["line"] == "q_proj")]
        assert list(nxt["step"]) == [10, 20]
        assert list(nxt["phi"]) == pytest.approx([0.6, 0.85])
        last = frame[(frame["measure"] == "last checkpoint") & (frame["kind"] == "module")]
        assert list(last["phi"]) == [0.3, 0.9, 1.0]

    def test_chart_spec(self):
        """Lines, points with tooltips, chance rule; y fixed to [0, 1]; validates."""
        spec = charts.phi_over_steps_chart(rows(), top=4, chance=0.05).to_dict()
        assert marks(spec) == [("line", False), ("point", True), ("rule", True)]
        assert spec["layer"][0]["encoding"]["y"]["scale"]["domain"] == [0, 1]
        assert spec["layer"][0]["encoding"]["y"]["title"] == "phi(k, k), k = min(4, r)"
