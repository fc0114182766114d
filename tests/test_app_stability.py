"""The alpha/r stability page run headless with Streamlit's AppTest (no browser)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow as pa
import pytest
from streamlit.testing.v1 import AppTest

from lorarank.stability import DEFAULT_LRS, DEFAULT_RANKS, run_stability, stability_findings
from lorarank.synthetic import make_target
from ui import stability as stab
from ui.common import md_plain
from ui.layout import TAB_PARAM
import testkit

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
PAGE = "pages/2_Alpha_r_stability.py"
TIMEOUT = 90


def open_page(**query) -> AppTest:
    """The page as a browser reaches it: app.py is the entry point, then the page runs."""
    return testkit.open_page(PAGE, query, timeout=TIMEOUT, home_first=False)


reading = testkit.page_text


def open_tab(at: AppTest, name: str) -> AppTest:
    """Open the tab ``name`` (as a click does: a rerun that draws its charts and tables)."""
    at.session_state[TAB_PARAM] = name
    return at.run()


def windows(at: AppTest):
    """The per-rule, per-rank window table (its tab opened: only the open tab draws tables)."""
    return open_tab(at, "Learning-rate window").dataframe[0].value


def charts(at: AppTest) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("vega_lite_chart")]


def chart_rows(at: AppTest, index: int):
    """The main dataset of the index-th chart (Streamlit ships it beside the spec as Arrow)."""
    proto = at.get("vega_lite_chart")[index].proto
    return pa.ipc.open_stream(proto.datasets[0].data.data).read_all().to_pandas()


class TestDefaults:
    """The page with no settings in the URL."""

    def test_runs_and_reads_the_engine_grid(self):
        """The default grid's reading on the page is the engine's, sentence for sentence."""
        at = open_page()
        assert not at.exception and not at.error
        grid = run_stability(make_target(), ranks=DEFAULT_RANKS, lrs=DEFAULT_LRS)
        found = stability_findings(grid, target_err=0.05)
        text = reading(at)
        for sentence in found.sentences:
            # the page sets each rule's name in bold
            for rule in grid.config["rules"]:
                if sentence.startswith(rule + " ("):
                    sentence = f"**{rule}**" + sentence[len(rule):]
            assert sentence in text

    def test_physics_on_the_page(self):
        """fixed-alpha's window moves up with r, alpha-eq-r's stays: read off the window table."""
        frame = windows(open_page())
        fixed = frame[frame["rule"] == "fixed-alpha"]["largest stable lr"].tolist()
        eq_r = frame[frame["rule"] == "alpha-eq-r"]["largest stable lr"].tolist()
        assert fixed[0] == "0.003" and fixed[-1].startswith("> ")
        assert len(set(eq_r)) == 1
        bound = frame[frame["rule"] == "alpha-eq-r"][stab.SGD_BOUND].iloc[0]
        assert float(bound) == pytest.approx(1 / make_target().singular_values[0], rel=1e-3)

    def test_adam_grid_has_no_sgd_bound(self):
        """The SGD bound 1/(s*sigma_1) is a column for an SGD grid only: Adam's step does not
        scale with the gradient, so the bound would contradict the grid beside it."""
        at = open_page(optimizer="adam", ranks="4,16", lrs="0.001,0.01", steps="50")
        assert not at.exception and not at.error
        frame = windows(at)
        assert "largest stable lr" in frame.columns
        assert not any("SGD bound" in c for c in frame.columns)

    def test_alpha_disabled_when_no_rule_reads_it(self):
        """alpha is greyed out (help says why) when every chosen rule ignores it, and editable
        as soon as one chosen rule reads it."""
        at = open_page(rules=["alpha-eq-r", "alpha-eq-2r"], ranks="4,16", lrs="0.001,0.01",
                       steps="50")
        assert not at.exception
        alpha = at.number_input(key="alpha")
        assert alpha.disabled and alpha.help.startswith("Not used now")
        at = open_page(rules=["alpha-eq-r", "rslora"], ranks="4,16", lrs="0.001,0.01", steps="50")
        assert not at.number_input(key="alpha").disabled

    def test_charts_and_downloads(self):
        """Heatmap, loss and norm charts render, each in its tab; the downloads hold every
        cell."""
        at = open_page()
        specs = charts(at)
        assert len(specs) == 4  # a heatmap panel per rule: only the open tab (Grid) draws charts
        assert [s["title"] for s in specs[:4]] == ["fixed-alpha", "alpha-eq-r", "alpha-eq-2r",
                                                   "rslora"]
        elements = at.get("vega_lite_chart")
        for spec, el in zip(specs[:4], elements):  # Streamlit moves inline rows into Arrow data
            rows = pa.ipc.open_stream(el.proto.data.data).read_all().to_pylist()
            assert {row["rule"] for row in rows} == {spec["title"]}
        assert len({json.dumps(s["layer"][0]["encoding"]["color"]["scale"]) for s in specs[:4]}) == 1
        buttons = at.get("download_button")
        assert [b.key for b in buttons] == ["stability_download_csv", "stability_download_json",
                                            "stability_report_download"]
        cells = at.dataframe[0].value
        assert len(cells) == 4 * len(DEFAULT_RANKS) * len(DEFAULT_LRS)
        assert not cells.isna().any().any()
        assert "nan" not in cells.to_string().lower()
        curves = [s["title"] for s in charts(open_tab(at, "Loss curves"))]
        assert len(curves) == 2 and curves[0].startswith("fixed-alpha")  # loss, then norms
        assert not at.dataframe  # the Grid's cell table is not drawn behind the open tab

    def test_every_input_is_defined(self):
        """Every widget carries help text; every table column a definition."""
        at = open_page()
        widgets = (list(at.number_input) + list(at.text_input) + list(at.radio)
                   + list(at.selectbox) + list(at.multiselect))
        assert len(widgets) >= 19
        assert all(w.help for w in widgets)


class TestUrl:
    """Settings in the URL reach the widgets and the grid."""

    @pytest.mark.parametrize("kind, key, raw, value", [
        ("number_input", "d_out", "48", 48),
        ("number_input", "sigma_max", "20", 20.0),
        ("text_input", "ranks", "2,8", "2,8"),
        ("text_input", "lrs", "0.01,0.1", "0.01,0.1"),
        ("radio", "optimizer", "adam", "adam"),
        ("number_input", "steps", "80", 80),
        ("number_input", "alpha", "8", 8.0),
        ("number_input", "target_err", "0.2", 0.2),
        ("selectbox", "calc_convention", "kohya", "kohya"),
        ("number_input", "calc_r", "4", 4),
    ])
    def test_param_restores_widget(self, kind, key, raw, value):
        """``?key=raw`` sets the widget to the value."""
        at = open_page(**{key: raw})
        assert not at.exception
        assert getattr(at, kind)(key=key).value == value

    def test_rules_and_grid_from_url(self):
        """Repeated ?rules= pick the rules; the window table covers exactly those cells."""
        at = open_page(rules=["rslora", "alpha-eq-2r"], ranks="2,16", lrs="0.001,0.1",
                       steps="60")
        assert not at.exception and not at.error
        assert at.multiselect(key="rules").value == ["rslora", "alpha-eq-2r"]
        assert "60 steps" in " ".join(md_plain(c.value) for c in at.caption)  # the Grid tab's
        frame = windows(at)
        assert frame["rule"].tolist() == ["rslora", "rslora", "alpha-eq-2r", "alpha-eq-2r"]
        assert frame["r"].tolist() == [2, 16, 2, 16]


class TestInteraction:
    """Changing widgets reruns the grid or the view."""

    @pytest.mark.parametrize("kind, key, value", [
        ("text_input", "ranks", "4,32"),
        ("text_input", "lrs", "0.002,0.02"),
        ("number_input", "alpha", 64.0),
        ("radio", "optimizer", "adam"),
    ])
    def test_change_changes_windows(self, kind, key, value):
        """The window table after the change differs from the default one."""
        at = open_page(steps="60")
        before = windows(at)
        getattr(at, kind)(key=key).set_value(value).run()
        assert not at.exception and not at.error
        assert not windows(at).equals(before)

    def test_curves_follow_selection(self):
        """Picking a column of the grid draws every learning rate at that rank."""
        at = open_page(steps="60")
        at.radio(key="curves_mode").set_value("every lr at one rank").run()
        at.selectbox(key="curves_rank").set_value(16).run()
        at.selectbox(key="curves_rule").set_value("rslora").run()
        assert not at.exception
        open_tab(at, "Loss curves")
        rows = chart_rows(at, -2)  # the loss chart, before the norms
        assert set(zip(rows["rule"], rows["rank"])) == {("rslora", 16)}
        assert set(rows["lr"]) <= set(DEFAULT_LRS) and len(set(rows["lr"])) >= 2
        assert charts(at)[-2]["title"] == "rslora, r = 16: every learning rate"


class TestCalculator:
    """The scaling calculator's numbers, against hand-computed values."""

    @pytest.mark.parametrize("query, s_old, s_same", [
        ({"calc_convention": "peft", "calc_r": "16", "calc_alpha": "32", "calc_r_new": "64"},
         "2", "0.5"),
        ({"calc_convention": "rslora", "calc_r": "16", "calc_alpha": "8", "calc_r_new": "64"},
         "2", "1"),
        ({"calc_convention": "kohya", "calc_r": "8", "calc_alpha": "4", "calc_r_new": "32"},
         "0.5", "0.125"),
        ({"calc_convention": "kohya", "calc_no_alpha": "true", "calc_r": "8", "calc_r_new": "32"},
         "1", "1"),
        ({"calc_convention": "mlx-lm", "calc_scale": "20", "calc_r": "8", "calc_r_new": "32"},
         "20", "20"),
    ])
    def test_metrics(self, query, s_old, s_same):
        """s under the convention and s at the new rank with the same knob."""
        at = open_page(steps="20", ranks="4", lrs="0.01", **query)
        assert not at.exception and not at.error
        assert [m.value for m in at.metric] == [s_old, s_same]

    def test_keep_table(self):
        """PEFT r 16 -> 64 at alpha 32: keep s needs alpha 128; keep rsLoRA needs alpha 64."""
        at = open_page(steps="20", ranks="4", lrs="0.01", calc_convention="peft", calc_r="16",
                       calc_alpha="32", calc_r_new="64", **{TAB_PARAM: "Scaling calculator"})
        table = at.dataframe[-1].value
        assert table["keep"].tolist() == ["scale", "rslora"]
        assert table["new alpha at r = 64"].tolist() == [128.0, 64.0]
        assert table["s at the new rank"].tolist() == [2.0, 1.0]


class TestBadInput:
    """Bad or impossible settings give one sentence and no traceback."""

    @pytest.mark.parametrize("query, message", [
        ({"lrs": "0.01,-3"}, "`lrs` should be positive numbers separated by commas, got '-3' in "
                             "'0.01,-3'"),
        ({"ranks": "4,x"}, "`ranks` should be whole numbers of at least 1 separated by commas, "
                           "got 'x' in '4,x'"),
        ({"ranks": "4,65"}, "rank 65 is larger than min(d_out, d_in) = 64"),
        ({"ranks": "4,4"}, "`ranks` lists 4 twice"),
        ({"ranks": "1,2,3,4,5,6,7,8,9"}, "`ranks` lists 9 ranks; the app fits at most 8"),
        ({"d_out": "300"}, "The link sets `d_out=300`, but d_out should be at most 256; the "
                           "default 64 is used instead."),
        ({"steps": "0"}, "The link sets `steps=0`, but steps should be at least 1; the default "
                         "200 is used instead."),
    ])
    def test_one_sentence(self, query, message):
        """The page shows exactly one error and no exception; the calculator still works."""
        at = open_page(**query)
        assert not at.exception
        assert [md_plain(e.value) for e in at.error] == [message]
        assert [m.value for m in at.metric] == ["2", "0.5"]  # PEFT r 16, alpha 32 -> r 64

    def test_unknown_rule_in_url(self):
        """An unknown ?rules= value is named in one sentence and the known ones are kept."""
        at = open_page(steps="20", rules=["bogus", "rslora"], curves_lr="7")
        assert not at.exception
        assert [md_plain(e.value) for e in at.error] == [
            "The link sets `rules=bogus`, but scaling rules are fixed-alpha, alpha-eq-r, "
            "alpha-eq-2r, rslora; it is ignored."]
        assert at.multiselect(key="rules").value == ["rslora"]
        assert at.selectbox(key="curves_lr").value == "0.01"  # an lr not in the grid: the middle one

    def test_no_rules_selected(self):
        """Clearing the rules says so in one sentence."""
        at = open_page(steps="20")
        at.multiselect(key="rules").set_value([]).run()
        assert not at.exception
        assert [md_plain(e.value) for e in at.error] == ["`rules` is empty: pick at least one scaling rule"]

    def test_diverged_everywhere_reads_without_nan(self):
        """A grid where every cell diverges reads as such, with no NaN on the page."""
        at = open_page(lrs="5,50", ranks="4,16", steps="30")
        assert not at.exception and not at.error
        assert "every tested learning rate diverged at every rank" in reading(at)
        cells = at.dataframe[0].value
        assert all(v.startswith("diverged at step") for v in cells["final relative error"])
        assert not any(isinstance(v, float) and math.isnan(v) for v in cells.to_numpy().ravel())


class TestPageSwitch:
    """Settings that share a name across pages."""

    def test_sweep_settings_do_not_leak_into_this_page(self):
        """A seed and ranks set on the Rank sweep page do not surface here, not even a rerun later."""
        at = AppTest.from_file(APP, default_timeout=TIMEOUT).switch_page("pages/1_Rank_sweep.py").run()
        at.number_input(key="seed").set_value(3).run()
        assert at.number_input(key="seed").value == 3
        at.switch_page(PAGE).run()
        assert not at.exception
        assert at.number_input(key="seed").value == 0
        at.run()
        assert at.number_input(key="seed").value == 0
        assert at.text_input(key="ranks").value == ",".join(str(r) for r in DEFAULT_RANKS)
