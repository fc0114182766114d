"""URL values of settings are checked before a bound widget sees them."""

from __future__ import annotations

import pytest

import altair as alt
import pandas as pd

from ui.common import Setting, chart_spec, parse_url_value
from ui.navigation import PAGES, available_pages

INT = Setting("true_rank", "intrinsic rank k", 4, "help", min_value=1, max_value=1024)
FLOAT = Setting("noise", "noise", 0.01, "help", kind="float", min_value=0.0, max_value=100.0)
OPTIONAL = Setting("lr", "learning rate", None, "help", kind="float", min_value=1e-9)
CHOICE = Setting("optimizer", "optimizer", "sgd", "help", kind="choice", options=("sgd", "adam"))
TEXT = Setting("ranks", "ranks r", "2,4,16", "help", kind="text")


class TestParseUrlValue:
    """``parse_url_value`` accepts what the widget can show and explains the rest."""

    @pytest.mark.parametrize("setting, raw, value", [
        (INT, "8", 8), (INT, "8.0", 8), (INT, " 3 ", 3), (FLOAT, "1e-3", 0.001), (FLOAT, "0", 0.0),
        (OPTIONAL, "", None), (CHOICE, "adam", "adam"), (TEXT, "anything", "anything"),
    ])
    def test_good(self, setting, raw, value):
        """Valid text becomes the widget's value."""
        assert parse_url_value(setting, raw) == value

    @pytest.mark.parametrize("setting, raw, reason", [
        (INT, "-3", "intrinsic rank k should be at least 1"),
        (INT, "abc", "intrinsic rank k should be a whole number"),
        (INT, "2.5", "intrinsic rank k should be a whole number"),
        (INT, "2000", "intrinsic rank k should be at most 1024"),
        (INT, "inf", "intrinsic rank k should be a finite number"),
        (INT, "", "intrinsic rank k should be a whole number"),
        (FLOAT, "nan", "noise should be a finite number"),
        (FLOAT, "x", "noise should be a number"),
        (FLOAT, "-1", "noise should be at least 0"),
        (CHOICE, "lion", "optimizer should be one of sgd, adam"),
        (CHOICE, "SGD", "optimizer should be one of sgd, adam"),
    ])
    def test_bad(self, setting, raw, reason):
        """Invalid text raises ValueError with the reason in words."""
        with pytest.raises(ValueError) as info:
            parse_url_value(setting, raw)
        assert str(info.value) == reason


class TestSetting:
    """Settings are checked when declared."""

    def test_choice_default_must_be_an_option(self):
        """A choice whose default is not an option is a programming error."""
        with pytest.raises(ValueError):
            Setting("x", "x", "c", "help", kind="choice", options=("a", "b"))

    def test_unknown_kind(self):
        """Only int, float, choice and text exist."""
        with pytest.raises(ValueError):
            Setting("x", "x", 1, "help", kind="bool")


class TestPages:
    """The navigation table."""

    def test_home_first_and_existing_pages_only(self):
        """Home leads; only pages whose script exists are listed."""
        pages = available_pages()
        assert pages[0].label == "Home"
        assert [p.label for p in PAGES] == ["Home", "Rank sweep", "alpha/r stability", "Adapter audit",
                                           "Fleet", "Glossary"]
        assert set(p.path for p in pages) <= set(p.path for p in PAGES)


class TestProgressBar:
    """``progress_bar`` adapts the engine's ``progress(done, total)`` callback."""

    def test_bar_is_removed_and_cache_hit_replays_nothing(self):
        """Inside a cached function the bar ends empty, and a cache hit shows no bar either."""
        from streamlit.testing.v1 import AppTest

        def script():
            import streamlit as st

            from ui.common import progress_bar

            @st.cache_data
            def work(n):
                with progress_bar("Working") as progress:
                    for i in range(n + 1):
                        progress(i, n)
                return n * 2

            st.write(f"result {work(50)}")

        at = AppTest.from_function(script, default_timeout=30).run()
        assert not at.exception
        assert at.markdown[0].value == "result 100"
        assert not at.get("progress")
        at.run()
        assert not at.exception
        assert at.markdown[0].value == "result 100"
        assert not at.get("progress")


class TestChartSpec:
    """``chart_spec`` gives the dict a cached function can return for ``show_chart``."""

    def test_drops_default_view_size_keeps_the_rest(self):
        """The 300 x 300 default view is dropped so the chart fills its container."""
        chart = alt.Chart(pd.DataFrame({"x": [1, 2], "y": [3, 4]})).mark_line().encode(
            x="x:Q", y=alt.Y("y:Q", scale=alt.Scale(type="log")), tooltip=["x:Q"])
        spec = chart_spec(chart)
        assert "continuousWidth" not in spec.get("config", {}).get("view", {})
        assert spec["encoding"]["y"]["scale"]["type"] == "log"
        assert list(spec["datasets"].values())[0] == [{"x": 1, "y": 3}, {"x": 2, "y": 4}]

    def test_keeps_explicit_config(self):
        """Other configuration survives."""
        chart = alt.Chart(pd.DataFrame({"x": [1]})).mark_point().encode(x="x:Q").configure_axis(grid=False)
        assert chart_spec(chart)["config"]["axis"] == {"grid": False}


class TestProgressText:
    """What a progress bar says: the count, the part of a long run, the time left."""

    def test_count_then_time_left(self):
        from ui.common import progress_text

        assert progress_text("Fitting", 90, 2000, share=0.045) == "Fitting (90 of 2,000)"
        # after a second and 1 % done, the time left at the rate so far: 2 s for 40 % -> 3 s more
        assert progress_text("Fitting", 800, 2000, share=0.4, spent=2.0, gained=0.4) == \
            "Fitting (800 of 2,000; about 3 s left)"

    def test_part_of_a_whole_run(self):
        """A rank of a run fitted rank by rank says which rank of how many and how much of the
        whole run is done (it said 'r = 4: 90 of 2,000 steps' and nothing more)."""
        from ui.common import progress_text

        text = progress_text("Fitting LoRA at r = 32: optimiser steps", 900, 3000, share=0.52,
                             part=("r = 32", "rank", 1, 3), spent=30.0, gained=0.5)
        assert text == ("Fitting LoRA at r = 32: optimiser steps (900 of 3,000; rank 2 of 3, 52 % "
                        "of the run; about 29 s left)")
        # a bar whose text does not name the part gets its label
        assert "(1 of 2; n = 512, sample size 2 of 2, 75 % of the run)" in progress_text(
            "Training", 1, 2, share=0.75, part=("n = 512", "sample size", 1, 2))

    def test_whole_run_share(self):
        """Parts weigh by their estimated work: the share of the whole counts the parts before."""
        from ui import common

        with common.whole_run([1.0, 3.0], ["r = 2", "r = 8"]) as part:
            whole = common._WHOLE.current
            part(0)
            assert whole.share(0.5) == pytest.approx(0.125)
            part(1)
            assert whole.share(0.5) == pytest.approx(0.625)
        assert getattr(common._WHOLE, "current", None) is None


class TestNotation:
    def test_engine_text_in_the_pages_notation(self):
        """The engine's ASCII (JSON, CLI) reads as the pages write it: s·B·A, σᵢ, Σσ²."""
        from ui.common import notation

        assert notation("update s*B@A") == "update s·B·A"
        assert notation("DoRA: the directional part s*B@A keeps sum sigma^2 of sigma_i") == \
            "DoRA: the directional part s·B·A keeps Σσ² of σᵢ"
        assert notation("collapsed (sigma_2 <= 1e-6 sigma_1)") == "collapsed (σ₂ ≤ 10⁻⁶·σ₁)"
        assert notation("update s*kron(W1, W2)") == "update s·kron(W1, W2)"
        assert notation("update s*B@(A*E) (AdaLoRA)") == "update s·B·(A⊙E) (AdaLoRA)"
        assert notation("above the noise floor (sigma > 0.185)") == "above the noise floor (σ > 0.185)"
        assert notation("sigma_max") == "sigma_max"  # a setting's name stays

    def test_pages_use_one_notation(self):
        """No page, ui module or chart builder writes s*B@A, 'sum sigma' or sigma_i in text a
        reader sees: the source's string literals (keys and setting names aside)."""
        import ast
        import re

        from ui.common import ROOT

        bad = re.compile(r"s\*B@A|s B A\b|\bsum sigma|\bsigma_i\b|\bsigma\^2|sigma_1\^2|sigma_1\.\.")
        found = []
        paths = [*(ROOT / "pages").glob("*.py"), *(ROOT / "ui").glob("*.py"),
                 *(ROOT / "lorarank" / "charts").glob("*.py"), ROOT / "lorarank" / "documents.py"]
        for path in paths:
            tree = ast.parse(path.read_text())
            docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                          if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef))
                          and node.body and isinstance(node.body[0], ast.Expr)}
            for node in ast.walk(tree):
                if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                        and id(node) not in docstrings and bad.search(node.value)):
                    found.append(f"{path.name}:{node.lineno}: {node.value[:60]}")
        assert found == []
