"""The Rank sweep page run headless with Streamlit's AppTest (no browser)."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
from streamlit.testing.v1 import AppTest

from lorarank.fit import DEFAULT_STEPS, fit_lora
from lorarank.spectrum import eckart_young_errors
from lorarank.synthetic import make_target
from markdown_tables import tables
from ui.common import md_plain
from ui.layout import TAB_PARAM
import testkit

PAGE = "pages/1_Rank_sweep.py"
TIMEOUT = 60


def open_sweep(**query: str) -> AppTest:
    """The page as a browser reaches it: app.py is the entry point, then the page runs."""
    return testkit.open_page(PAGE, query, timeout=TIMEOUT, home_first=False)


def table(at: AppTest):
    """The results table the page shows (a markdown table: it draws at once), as a frame with
    whole numbers for r and steps run."""
    import pandas as pd
    from markdown_tables import tables

    frame = pd.DataFrame(tables(at)[0])
    for column in ("r", "steps run"):
        frame[column] = frame[column].astype(int)
    return frame


reading = testkit.page_text


class TestDefaults:
    """The page with no settings in the URL."""

    def test_runs_and_shows_article_table(self):
        """Defaults fit r = 2, 4, 16 on the 64 x 64, k = 4 target with the engine's settings."""
        at = open_sweep()
        assert not at.exception
        assert not at.error
        frame = table(at)
        assert frame["r"].tolist() == [2, 4, 16]
        assert set(frame["steps run"]) == {DEFAULT_STEPS}

    def test_table_matches_engine(self):
        """The shown errors are the engine's, and the optimum is Eckart-Young on T."""
        at = open_sweep()
        target = make_target()
        results = fit_lora(target, [2, 4, 16])
        frame = table(at)
        assert frame["final relative error"].tolist() == [f"{r.rel_err:.4g}" for r in results]
        optimum = eckart_young_errors(target.singular_values, [2, 4, 16])
        assert frame["Eckart-Young optimum"].tolist() == [f"{x:.4g}" for x in optimum]
        assert frame["effective rank"].tolist() == ["2", "4", "4"]

    def test_reading_names_each_regime(self):
        """The reading classifies r = 2, 4, 16 against the 4 directions above the noise."""
        text = reading(open_sweep())
        assert "**r = 2** is under-parameterised" in text
        assert "**r = 4** matches the intrinsic rank" in text
        assert "**r = 16** is over-parameterised" in text
        assert "drove the other 12 to it" in text

    def test_charts_are_log_scale_with_tooltips(self):
        """The spectrum panels (one per rank, shared log axis, noise floor) and the loss chart
        render, each panel as wide as its column."""
        at = open_sweep()
        elements = at.get("vega_lite_chart")
        panels = [json.loads(el.proto.spec) for el in elements]
        assert len(panels) == 3  # only the open tab (Spectra) draws its charts
        assert [p["title"] for p in panels] == ["r = 2", "r = 4", "r = 16"]
        for panel, el in zip(panels, elements):
            assert panel["width"] == "container"
            # Streamlit moves a spec's inline rows into the element's Arrow data
            rows = pa.ipc.open_stream(el.proto.data.data).read_all().to_pylist()
            assert {row["panel"] for row in rows} == {panel["title"]}
            y = panel["layer"][0]["encoding"]["y"]["scale"]
            assert y["type"] == "log"
            assert y["domain"] == panels[0]["layer"][0]["encoding"]["y"]["scale"]["domain"]
            assert any(layer["mark"]["type"] == "rule" for layer in panel["layer"])
        at.session_state[TAB_PARAM] = "Loss curves"  # as a click on the tab: a rerun
        [loss] = [json.loads(el.proto.spec) for el in at.run().get("vega_lite_chart")]
        assert loss["layer"][0]["encoding"]["y"]["scale"]["type"] == "log"
        assert loss["layer"][0]["encoding"]["tooltip"]

    def test_link_opens_a_tab_and_a_bad_one_the_first(self):
        """?tab=Loss+curves opens that tab, drawing only its chart; a tab the page does not have
        opens the first (Streamlit drops the parameter) without an error."""
        at = open_sweep(tab="Loss curves")
        assert not at.exception and not at.error
        [loss] = [json.loads(el.proto.spec) for el in at.get("vega_lite_chart")]
        assert "Spectra" not in json.dumps(loss) and loss["layer"][0]["encoding"]["tooltip"]
        at = open_sweep(tab="<script>nope</script>")
        assert not at.exception and not at.error
        assert [json.loads(el.proto.spec)["title"] for el in at.get("vega_lite_chart")] == [
            "r = 2", "r = 4", "r = 16"]

    def test_every_number_is_defined(self):
        """Every widget has help text and the table columns carry definitions."""
        at = open_sweep()
        widgets = list(at.number_input) + list(at.text_input) + list(at.radio) + list(at.selectbox)
        assert len(widgets) == 19  # 13 of the exact sweep + 6 of the data mode (epochs)
        assert all(w.help for w in widgets)


class TestEdgeSettings:
    """Valid but unusual settings run without exception or error."""

    @pytest.mark.parametrize("query", [
        {"d_out": "32", "d_in": "80", "true_rank": "3", "ranks": "1,3,32"},
        {"d_out": "8", "d_in": "8", "true_rank": "8", "ranks": "1,8"},
        {"noise": "0", "ranks": "4,16"},
        {"spectrum": "geometric", "optimizer": "adam", "steps": "50"},
        {"spectrum": "flat", "rule": "fixed-alpha", "alpha": "8"},
        {"rule": "rslora", "ranks": "1", "steps": "1"},
        {"noise": "5", "true_rank": "4"},
    ])
    def test_runs_clean(self, query):
        """The page renders its table and reading for the settings."""
        at = open_sweep(**query)
        assert not at.exception
        assert not at.error
        assert table(at)["r"].tolist() == [int(r) for r in query.get("ranks", "2,4,16").split(",")]
        assert "The target has" in reading(at)

    def test_diverged_fit_reads_diverged_not_nan(self):
        """A learning rate far too large shows "diverged at step N" and no NaN anywhere."""
        at = open_sweep(lr="0.5")
        assert not at.exception
        frame = table(at)
        assert all(v.startswith("diverged at step ") for v in frame["final relative error"])
        assert not frame.isna().any().any()
        assert "nan" not in frame.to_string().lower()
        assert "**r = 2** diverged at step" in reading(at)
        # alpha-eq-r gives s = 1 at every rank: the advice is the learning rate, not the rule
        assert "alpha rule is not the cause" in reading(at)
        assert "pick an alpha rule" not in reading(at)
        assert "does not grow with r" not in reading(at)

    def test_divergence_from_a_large_s_names_the_rule(self):
        """fixed-alpha gives r = 1 s = 16 and r = 16 s = 1: only r = 1 diverges, and the
        advice points at its larger s."""
        at = open_sweep(rule="fixed-alpha", alpha="16", ranks="1,16", steps="200")
        assert not at.exception and not at.error
        text = reading(at)
        assert "**r = 1** diverged at step" in text and "**r = 16** diverged" not in text
        assert "r = 16 trained with s = 1" in text and "pick an alpha rule" in text

    @pytest.mark.parametrize("rule, disabled", [("alpha-eq-r", True), ("alpha-eq-2r", True),
                                                ("fixed-alpha", False), ("rslora", False)])
    def test_alpha_disabled_where_the_rule_ignores_it(self, rule, disabled):
        """alpha is greyed out under alpha-eq-r / alpha-eq-2r, with help saying why."""
        at = open_sweep(rule=rule, ranks="2,4", steps="50")
        widget = at.number_input(key="alpha")
        assert widget.disabled is disabled
        assert widget.help.startswith("Not used now") is disabled


class TestWidgets:
    """Changing a widget reruns the sweep."""

    @pytest.mark.parametrize("kind, key, value", [
        ("number_input", "true_rank", 8),
        ("number_input", "seed", 3),
        ("number_input", "noise", 0.1),
        ("text_input", "ranks", "2,4,8"),
        ("radio", "optimizer", "adam"),
        ("selectbox", "spectrum", "geometric"),
        ("selectbox", "rule", "alpha-eq-2r"),
    ])
    def test_change_changes_table(self, kind, key, value):
        """The table after the change differs from the default one."""
        at = open_sweep()
        before = table(at)
        getattr(at, kind)(key=key).set_value(value).run()
        assert not at.exception and not at.error
        assert not table(at).equals(before)

    def test_learning_rate_defaults_to_engine_per_optimizer(self):
        """An empty learning rate uses the engine's default for the chosen optimizer."""
        from lorarank.fit import DEFAULT_LR

        at = open_sweep(optimizer="adam")
        assert at.number_input(key="lr").value is None
        assert f"Learning rate {DEFAULT_LR['adam']:g} (adam)" in " ".join(md_plain(c.value) for c in at.caption)


class TestUrl:
    """Settings in the URL restore the widgets."""

    @pytest.mark.parametrize("kind, key, raw, value", [
        ("number_input", "d_out", "96", 96),
        ("number_input", "d_in", "48", 48),
        ("number_input", "true_rank", "6", 6),
        ("number_input", "noise", "0.05", 0.05),
        ("number_input", "sigma_max", "10", 10.0),
        ("number_input", "lr", "0.001", 0.001),
        ("number_input", "steps", "300", 300),
        ("number_input", "seed", "7", 7),
        ("number_input", "alpha", "32", 32.0),
        ("text_input", "ranks", "3,6,12", "3,6,12"),
        ("radio", "optimizer", "adam", "adam"),
        ("selectbox", "spectrum", "flat", "flat"),
        ("selectbox", "rule", "rslora", "rslora"),
    ])
    def test_param_restores_widget(self, kind, key, raw, value):
        """``?key=raw`` sets the widget to the value."""
        at = open_sweep(**{key: raw})
        assert not at.exception
        assert getattr(at, kind)(key=key).value == value

    def test_params_reach_the_table(self):
        """The table is computed from the URL's settings."""
        at = open_sweep(d_out="40", d_in="30", true_rank="5", ranks="5,10", steps="200")
        frame = table(at)
        assert frame["r"].tolist() == [5, 10]
        assert set(frame["steps run"]) == {200}
        target = make_target(40, 30, true_rank=5)
        optimum = eckart_young_errors(target.singular_values, [5, 10])
        assert frame["Eckart-Young optimum"].tolist() == [f"{x:.4g}" for x in optimum]


class TestBadInput:
    """Bad or impossible settings give one sentence and no traceback."""

    @pytest.mark.parametrize("query, message", [
        ({"true_rank": "-3"}, "The link sets `true_rank=-3`, but intrinsic rank k should be at "
                              "least 1; the default 4 is used instead."),
        ({"true_rank": "abc"}, "The link sets `true_rank=abc`, but intrinsic rank k should be a "
                               "whole number; the default 4 is used instead."),
        ({"d_out": "2.5"}, "The link sets `d_out=2.5`, but d_out should be a whole number; the "
                           "default 64 is used instead."),
        ({"d_out": "inf"}, "The link sets `d_out=inf`, but d_out should be a finite number; the "
                           "default 64 is used instead."),
        ({"d_in": "100000"}, "The link sets `d_in=100000`, but d_in should be at most 1024; the "
                             "default 64 is used instead."),
        ({"noise": "nan"}, "The link sets `noise=nan`, but noise should be a finite number; the "
                           "default 0.01 is used instead."),
        ({"optimizer": "lion"}, "The link sets `optimizer=lion`, but optimizer should be one of "
                                "sgd, adam; the default sgd is used instead."),
        ({"lr": "-1"}, "The link sets `lr=-1`, but learning rate should be at least 1e-09; the "
                       "default empty (the engine's default) is used instead."),
    ])
    def test_bad_url_value_is_one_sentence_and_page_still_runs(self, query, message):
        """The page names the bad value, falls back to the default and still shows results."""
        at = open_sweep(**query)
        assert not at.exception
        assert [md_plain(e.value) for e in at.error] == [message]
        assert table(at)["r"].tolist() == [2, 4, 16]

    def test_bad_value_leaves_url_and_widget_at_default(self):
        """``?d_out=2.5`` is removed from the URL and the widget shows 64, as the sentence says."""
        at = open_sweep(d_out="2.5", true_rank="3")
        assert at.number_input(key="d_out").value == 64
        assert at.number_input(key="true_rank").value == 3
        assert "d_out" not in at.query_params
        assert at.query_params.get("true_rank") == "3"

    def test_sentence_shown_once(self):
        """After the next interaction the sentence about the old link is gone."""
        at = open_sweep(true_rank="abc")
        assert len(at.error) == 1
        at.number_input(key="seed").set_value(1).run()
        assert not at.error and not at.exception

    @pytest.mark.parametrize("query, message", [
        ({"d_out": "8", "true_rank": "9"},
         "`true_rank` = 9 is larger than the matrix allows: min(d_out, d_in) = 8"),
        ({"ranks": "2,100"}, "rank 100 is larger than min(d_out, d_in) = 64"),
        ({"ranks": "4,4"}, "`ranks` lists a rank twice: [4, 4]"),
        ({"ranks": "2,x"}, "`ranks` should be whole numbers of at least 1 separated by commas, "
                           "got 'x' in '2,x'"),
        ({"ranks": "0"}, "`ranks` should be whole numbers of at least 1 separated by commas, "
                         "got '0' in '0'"),
        ({"ranks": ", ,"}, "`ranks` should list at least one rank, e.g. 2,4,16"),
        ({"ranks": ",".join(str(r) for r in range(1, 14))},
         "`ranks` lists 13 ranks; the app fits at most 12"),
    ])
    def test_impossible_setting_is_one_sentence(self, query, message):
        """An impossible combination stops the page with the engine's sentence."""
        at = open_sweep(**query)
        assert not at.exception
        assert [md_plain(e.value) for e in at.error] == [message]
        assert not tables(at)
